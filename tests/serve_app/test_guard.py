"""Bearer-token auth (all endpoints but /health) and stale trials, on the guarded app."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

AxRequest = Callable[..., dict[str, Any]]
TOKEN = "s3cret-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_health_needs_no_token(guarded_app: str, client: httpx.Client) -> None:
    assert client.get(f"{guarded_app}/health").status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/optimize"),
        ("GET", "/studies"),
        ("POST", "/studies/x/suggest"),
        ("POST", "/studies/x/evaluate"),
        ("GET", "/studies/x/results"),
        ("DELETE", "/studies/x"),
        ("GET", "/jobs"),
        ("GET", "/jobs/x"),
        ("DELETE", "/jobs/x"),
        ("GET", "/docs"),
    ],
)
@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {TOKEN}", TOKEN])
def test_every_other_endpoint_needs_the_token(
    guarded_app: str, client: httpx.Client, method: str, path: str, header: str | None
) -> None:
    headers = {} if header is None else {"Authorization": header}
    response = client.request(method, guarded_app + path, headers=headers)
    assert response.status_code == 401
    assert "bearer token" in response.json()["detail"]
    assert TOKEN not in response.text


def test_the_token_opens_every_endpoint(
    guarded_app: str, client: httpx.Client, ax_request: AxRequest, name: str
) -> None:
    created = client.post(f"{guarded_app}/optimize", json=ax_request(name), headers=AUTH)
    assert created.status_code == 200
    assert client.post(f"{guarded_app}/studies/{name}/suggest", headers=AUTH).status_code == 200
    assert client.get(f"{guarded_app}/studies", headers=AUTH).status_code == 200


def test_stale_trial_is_failed_and_cannot_be_evaluated(
    guarded_app: str, client: httpx.Client, ax_request: AxRequest, name: str
) -> None:
    client.post(f"{guarded_app}/optimize", json=ax_request(name), headers=AUTH).raise_for_status()
    abandoned = client.post(f"{guarded_app}/studies/{name}/suggest", headers=AUTH).json()
    time.sleep(2.0)  # the guarded app's stale-trial timeout is 1.5 s
    fresh = client.post(f"{guarded_app}/studies/{name}/suggest", headers=AUTH).json()

    results = client.get(f"{guarded_app}/studies/{name}/results", headers=AUTH)
    assert results.status_code == 200, results.text
    trials = results.json()["trials"]
    states = {t["number"]: t["state"] for t in trials}
    assert states == {abandoned["trial_number"]: "FAIL", fresh["trial_number"]: "RUNNING"}

    late = client.post(
        f"{guarded_app}/studies/{name}/evaluate",
        json={"trial_number": abandoned["trial_number"], "value": 1.0},
        headers=AUTH,
    )
    assert late.status_code == 409
    assert "stale trial" in late.json()["detail"]
    on_time = client.post(
        f"{guarded_app}/studies/{name}/evaluate",
        json={"trial_number": fresh["trial_number"], "value": 0.5},
        headers=AUTH,
    )
    assert on_time.status_code == 200


def test_stale_trials_show_in_job_progress(
    guarded_app: str, client: httpx.Client, ax_request: AxRequest, name: str
) -> None:
    job_id = client.post(f"{guarded_app}/optimize", json=ax_request(name), headers=AUTH).json()[
        "job_id"
    ]
    client.post(f"{guarded_app}/studies/{name}/suggest", headers=AUTH).raise_for_status()
    time.sleep(2.0)
    progress = client.get(f"{guarded_app}/jobs/{job_id}", headers=AUTH).json()["progress"]
    assert progress["failed"] == 1
    assert progress["running"] == 0
    assert progress["finished"] == 0
