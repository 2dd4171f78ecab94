"""Every endpoint of the Ax protocol on a real Serve deployment (SQLite), happy paths."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

AxRequest = Callable[..., dict[str, Any]]


def test_health_answers_ok(sqlite_app: str, client: httpx.Client) -> None:
    response = client.get(f"{sqlite_app}/health")
    assert response.status_code == 200
    assert response.json()["status"] == "healthy"


def test_openapi_docs_are_served(sqlite_app: str, client: httpx.Client) -> None:
    assert client.get(f"{sqlite_app}/docs").status_code == 200
    paths = client.get(f"{sqlite_app}/openapi.json").json()["paths"]
    assert {"/optimize", "/studies/{study_name}/suggest", "/jobs/{job_id}"} <= set(paths)


def test_suggest_evaluate_results_round_trip(
    sqlite_app: str, client: httpx.Client, ax_request: AxRequest, name: str
) -> None:
    created = client.post(f"{sqlite_app}/optimize", json=ax_request(name, n_trials=3))
    assert created.status_code == 200, created.text
    assert created.json()["study_name"] == name
    assert created.json()["status"] == "pending"

    told: dict[int, float] = {}
    for value in (0.2, 0.9, 0.5):
        suggestion = client.post(
            f"{sqlite_app}/studies/{name}/suggest", headers={"Content-Type": "application/json"}
        )
        assert suggestion.status_code == 200, suggestion.text
        body = suggestion.json()
        assert set(body["params"]) == {
            "temperature",
            "bootstrappedDemos",
            "instruction",
            "labeledExamples",
        }
        assert 0.1 <= body["params"]["temperature"] <= 2.0
        assert isinstance(body["params"]["bootstrappedDemos"], int)
        evaluated = client.post(
            f"{sqlite_app}/studies/{name}/evaluate",
            json={"study_name": name, "trial_number": body["trial_number"], "value": value},
        )
        assert evaluated.status_code == 200, evaluated.text
        assert evaluated.json()["state"] == "COMPLETE"
        told[body["trial_number"]] = value

    results = client.get(f"{sqlite_app}/studies/{name}/results").json()
    assert results["direction"] == "maximize"
    assert results["n_trials"] == 3
    assert {t["number"]: t["value"] for t in results["trials"]} == told
    assert all(t["state"] == "COMPLETE" for t in results["trials"])
    assert results["best_value"] == 0.9
    best_number = max(told, key=lambda n: told[n])
    assert results["best_trial"]["number"] == best_number
    assert results["best_params"] == results["trials"][best_number]["params"]
    assert results["trials"][0]["duration"] is not None


def test_results_without_finished_trials_have_null_best(
    sqlite_app: str, client: httpx.Client, ax_request: AxRequest, name: str
) -> None:
    client.post(f"{sqlite_app}/optimize", json=ax_request(name)).raise_for_status()
    client.post(f"{sqlite_app}/studies/{name}/suggest").raise_for_status()
    results = client.get(f"{sqlite_app}/studies/{name}/results")
    assert results.status_code == 200
    body = results.json()
    assert body["best_trial"] is None and body["best_value"] is None
    assert body["best_params"] is None
    assert [t["state"] for t in body["trials"]] == ["RUNNING"]


def test_minimize_direction_picks_lowest(
    sqlite_app: str, client: httpx.Client, ax_request: AxRequest, name: str
) -> None:
    request = ax_request(name, objective={"name": "loss", "direction": "minimize"})
    client.post(f"{sqlite_app}/optimize", json=request).raise_for_status()
    for value in (3.0, 1.0, 2.0):
        number = client.post(f"{sqlite_app}/studies/{name}/suggest").json()["trial_number"]
        client.post(
            f"{sqlite_app}/studies/{name}/evaluate",
            json={"study_name": name, "trial_number": number, "value": value},
        ).raise_for_status()
    results = client.get(f"{sqlite_app}/studies/{name}/results").json()
    assert results["direction"] == "minimize"
    assert results["best_value"] == 1.0


def test_list_and_delete_studies(
    sqlite_app: str, client: httpx.Client, ax_request: AxRequest, name: str
) -> None:
    client.post(f"{sqlite_app}/optimize", json=ax_request(name)).raise_for_status()
    assert name in client.get(f"{sqlite_app}/studies").json()
    deleted = client.delete(f"{sqlite_app}/studies/{name}")
    assert deleted.status_code == 200
    assert name not in client.get(f"{sqlite_app}/studies").json()
    assert client.get(f"{sqlite_app}/studies/{name}/results").status_code == 404
    assert client.post(f"{sqlite_app}/studies/{name}/suggest").status_code == 404


def test_optimize_without_study_name_generates_one(
    sqlite_app: str, client: httpx.Client, ax_request: AxRequest
) -> None:
    request = ax_request("unused")
    del request["study_name"]
    created = client.post(f"{sqlite_app}/optimize", json=request)
    assert created.status_code == 200
    name = created.json()["study_name"]
    assert client.post(f"{sqlite_app}/studies/{name}/suggest").status_code == 200


def test_seeded_studies_suggest_the_same_first_trial(
    sqlite_app: str, client: httpx.Client, ax_request: AxRequest
) -> None:
    first: list[dict[str, object]] = []
    for _ in range(2):
        name = f"test_{uuid.uuid4().hex[:12]}"
        request = ax_request(name, sampler="RandomSampler", metadata={"seed": 0})
        client.post(f"{sqlite_app}/optimize", json=request).raise_for_status()
        first.append(client.post(f"{sqlite_app}/studies/{name}/suggest").json()["params"])
    assert first[0] == first[1]


@pytest.mark.parametrize("sampler", ["TPESampler", "RandomSampler", "CmaEsSampler"])
@pytest.mark.parametrize(
    "pruner", ["MedianPruner", "SuccessiveHalvingPruner", "HyperbandPruner", None]
)
def test_every_sampler_and_pruner_works(
    sqlite_app: str,
    client: httpx.Client,
    sampler: str,
    pruner: str | None,
    ax_request: AxRequest,
    name: str,
) -> None:
    request = ax_request(name, sampler=sampler, pruner=pruner)
    client.post(f"{sqlite_app}/optimize", json=request).raise_for_status()
    number = client.post(f"{sqlite_app}/studies/{name}/suggest").json()["trial_number"]
    evaluated = client.post(
        f"{sqlite_app}/studies/{name}/evaluate",
        json={"trial_number": number, "value": 0.5, "intermediate_values": {"0": 0.4}},
    )
    assert evaluated.status_code == 200, evaluated.text
