"""Every caller mistake gets a specific JSON 4xx answer, never a 500 or a traceback."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

AxRequest = Callable[..., dict[str, Any]]

FLOAT = {"name": "x", "type": "float", "low": 0.0, "high": 1.0}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"parameters": [{"name": "x", "type": "float", "low": 0.0}]},
            "needs both 'low' and 'high'",
        ),
        ({"parameters": [{"name": "n", "type": "int", "high": 3}]}, "needs both 'low' and 'high'"),
        (
            {"parameters": [{"name": "x", "type": "float", "low": 2.0, "high": 1.0}]},
            "low 2.0 > high 1.0",
        ),
        (
            {"parameters": [{"name": "x", "type": "float", "low": 0.0, "high": 1.0, "log": True}]},
            "log scale, so low must be > 0",
        ),
        ({"parameters": [{"name": "c", "type": "categorical"}]}, "non-empty 'choices'"),
        (
            {"parameters": [{"name": "c", "type": "categorical", "choices": []}]},
            "non-empty 'choices'",
        ),
        ({"parameters": [FLOAT, FLOAT]}, "duplicate parameter names: x"),
        ({"parameters": []}, "at least one parameter"),
        ({"parameters": [{"name": "x", "type": "complex"}]}, "parameters[0].type"),
        ({"sampler": "GridSampler"}, "'GridSampler'"),
        ({"pruner": "PercentilePruner"}, "'PercentilePruner'"),
        ({"n_trials": 0}, "n_trials"),
        ({"n_trials": 10001}, "n_trials"),
        ({"objective": {"name": "s", "direction": "sideways"}}, "objective.direction"),
        ({"metadata": {"seed": "abc"}}, "metadata.seed must be an integer"),
    ],
)
def test_invalid_spec_is_422_with_specific_message(
    sqlite_app: str,
    client: httpx.Client,
    ax_request: AxRequest,
    name: str,
    change: dict[str, Any],
    expected: str,
) -> None:
    response = client.post(f"{sqlite_app}/optimize", json=ax_request(name, **change))
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str)
    assert expected in detail
    assert name not in client.get(f"{sqlite_app}/studies").json()


def test_malformed_json_is_422(sqlite_app: str, client: httpx.Client) -> None:
    response = client.post(
        f"{sqlite_app}/optimize",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert "not valid JSON" in response.json()["detail"]


def test_duplicate_study_is_409(
    sqlite_app: str, client: httpx.Client, ax_request: AxRequest, name: str
) -> None:
    client.post(f"{sqlite_app}/optimize", json=ax_request(name)).raise_for_status()
    again = client.post(f"{sqlite_app}/optimize", json=ax_request(name))
    assert again.status_code == 409
    assert "already exists" in again.json()["detail"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/studies/{missing}/suggest"),
        ("GET", "/studies/{missing}/results"),
        ("DELETE", "/studies/{missing}"),
        ("GET", "/jobs/{missing}"),
        ("DELETE", "/jobs/{missing}"),
    ],
)
def test_unknown_study_or_job_is_404(
    sqlite_app: str, client: httpx.Client, name: str, method: str, path: str
) -> None:
    response = client.request(method, sqlite_app + path.format(missing=name))
    assert response.status_code == 404
    assert name in response.json()["detail"]


def test_evaluate_unknown_study_is_404(sqlite_app: str, client: httpx.Client, name: str) -> None:
    response = client.post(
        f"{sqlite_app}/studies/{name}/evaluate", json={"trial_number": 0, "value": 1.0}
    )
    assert response.status_code == 404


def test_evaluate_unknown_trial_is_404_and_finished_trial_is_409(
    sqlite_app: str, client: httpx.Client, ax_request: AxRequest, name: str
) -> None:
    client.post(f"{sqlite_app}/optimize", json=ax_request(name)).raise_for_status()
    number = client.post(f"{sqlite_app}/studies/{name}/suggest").json()["trial_number"]
    url = f"{sqlite_app}/studies/{name}/evaluate"

    unknown = client.post(url, json={"study_name": name, "trial_number": 7, "value": 1.0})
    assert unknown.status_code == 404
    assert "has no trial 7" in unknown.json()["detail"]

    first = client.post(url, json={"study_name": name, "trial_number": number, "value": 0.3})
    assert first.status_code == 200
    again = client.post(url, json={"study_name": name, "trial_number": number, "value": 0.9})
    assert again.status_code == 409
    assert "already finished (COMPLETE)" in again.json()["detail"]
    trials = client.get(f"{sqlite_app}/studies/{name}/results").json()["trials"]
    assert [t["value"] for t in trials] == [0.3]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"trial_number": 0}, "value: Field required"),
        ({"trial_number": -1, "value": 1.0}, "trial_number"),
        ({"trial_number": 0, "value": "high"}, "value"),
        ({"trial_number": 0, "value": 1.0, "intermediate_values": {"x": 1}}, "intermediate_values"),
    ],
)
def test_invalid_evaluation_is_422(
    sqlite_app: str,
    client: httpx.Client,
    ax_request: AxRequest,
    name: str,
    body: dict[str, Any],
    expected: str,
) -> None:
    client.post(f"{sqlite_app}/optimize", json=ax_request(name)).raise_for_status()
    response = client.post(f"{sqlite_app}/studies/{name}/evaluate", json=body)
    assert response.status_code == 422
    assert expected in response.json()["detail"]


def test_evaluate_with_mismatched_study_name_is_409(
    sqlite_app: str, client: httpx.Client, ax_request: AxRequest, name: str
) -> None:
    client.post(f"{sqlite_app}/optimize", json=ax_request(name)).raise_for_status()
    response = client.post(
        f"{sqlite_app}/studies/{name}/evaluate",
        json={"study_name": "other", "trial_number": 0, "value": 1.0},
    )
    assert response.status_code == 409
    assert "does not match" in response.json()["detail"]


def test_body_over_the_limit_is_413(sqlite_app: str, client: httpx.Client, name: str) -> None:
    huge = {"study_name": name, "padding": "x" * 70_000}
    response = client.post(f"{sqlite_app}/optimize", json=huge)
    assert response.status_code == 413
    assert "larger than 65536 bytes" in response.json()["detail"]


def test_chunked_body_over_the_limit_is_413(sqlite_app: str, client: httpx.Client) -> None:
    def chunks() -> Any:
        for _ in range(20):
            yield b"x" * 8192

    response = client.post(
        f"{sqlite_app}/optimize", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413, response.text


def test_unknown_path_is_json_404(sqlite_app: str, client: httpx.Client) -> None:
    response = client.get(f"{sqlite_app}/nope")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}
