"""Jobs follow the client: pending -> running -> completed, failed (timeout) or cancelled."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

AxRequest = Callable[..., dict[str, Any]]


def _trial(client: httpx.Client, app: str, name: str, value: float) -> int:
    number = client.post(f"{app}/studies/{name}/suggest").json()["trial_number"]
    client.post(
        f"{app}/studies/{name}/evaluate",
        json={"study_name": name, "trial_number": number, "value": value},
    ).raise_for_status()
    return int(number)


def test_job_moves_pending_running_completed_with_progress(
    sqlite_app: str, client: httpx.Client, ax_request: AxRequest, name: str
) -> None:
    job_id = client.post(f"{sqlite_app}/optimize", json=ax_request(name, n_trials=2)).json()[
        "job_id"
    ]
    job = client.get(f"{sqlite_app}/jobs/{job_id}").json()
    assert job["status"] == "pending"
    assert job["started_at"] is None
    assert job["progress"]["finished"] == 0

    _trial(client, sqlite_app, name, 0.4)
    job = client.get(f"{sqlite_app}/jobs/{job_id}").json()
    assert job["status"] == "running"
    assert job["started_at"] is not None
    assert job["progress"]["finished"] == 1
    assert job["progress"]["fraction"] == 0.5
    assert job["progress"]["best_value"] == 0.4

    _trial(client, sqlite_app, name, 0.7)
    job = client.get(f"{sqlite_app}/jobs/{job_id}").json()
    assert job["status"] == "completed"
    assert job["completed_at"] is not None
    assert job["progress"]["finished"] == 2
    assert job["progress"]["best_value"] == 0.7
    assert job["progress"]["best_trial"] == 1
    assert job["result"]["best_value"] == 0.7
    assert [t["number"] for t in job["result"]["trials"]] == [0, 1]


def test_the_service_runs_no_trials_of_its_own(
    sqlite_app: str, client: httpx.Client, ax_request: AxRequest, name: str
) -> None:
    client.post(f"{sqlite_app}/optimize", json=ax_request(name, n_trials=50)).raise_for_status()
    told = _trial(client, sqlite_app, name, 0.5)
    trials = client.get(f"{sqlite_app}/studies/{name}/results").json()["trials"]
    assert [t["number"] for t in trials] == [told]


def test_cancelled_job_refuses_suggestions_with_409(
    sqlite_app: str, client: httpx.Client, ax_request: AxRequest, name: str
) -> None:
    job_id = client.post(f"{sqlite_app}/optimize", json=ax_request(name)).json()["job_id"]
    _trial(client, sqlite_app, name, 0.5)
    cancelled = client.delete(f"{sqlite_app}/jobs/{job_id}")
    assert cancelled.status_code == 200
    job = client.get(f"{sqlite_app}/jobs/{job_id}").json()
    assert job["status"] == "cancelled"
    assert job["completed_at"] is not None
    refused = client.post(f"{sqlite_app}/studies/{name}/suggest")
    assert refused.status_code == 409
    assert "cancelled" in refused.json()["detail"]
    assert "POST /optimize" in refused.json()["detail"]
    # Cancelling twice is harmless.
    assert client.delete(f"{sqlite_app}/jobs/{job_id}").status_code == 200


def test_completed_job_cannot_be_cancelled(
    sqlite_app: str, client: httpx.Client, ax_request: AxRequest, name: str
) -> None:
    job_id = client.post(f"{sqlite_app}/optimize", json=ax_request(name, n_trials=1)).json()[
        "job_id"
    ]
    _trial(client, sqlite_app, name, 0.5)
    response = client.delete(f"{sqlite_app}/jobs/{job_id}")
    assert response.status_code == 409
    assert "already completed" in response.json()["detail"]


def test_deleting_the_study_keeps_the_job_and_its_progress(
    sqlite_app: str, client: httpx.Client, ax_request: AxRequest, name: str
) -> None:
    job_id = client.post(f"{sqlite_app}/optimize", json=ax_request(name, n_trials=4)).json()[
        "job_id"
    ]
    _trial(client, sqlite_app, name, 0.25)
    client.delete(f"{sqlite_app}/studies/{name}").raise_for_status()
    job = client.get(f"{sqlite_app}/jobs/{job_id}").json()
    assert job["status"] == "cancelled"
    assert "study deleted after 1 of 4 trials" in job["error"]
    assert job["progress"]["finished"] == 1
    assert job["progress"]["best_value"] == 0.25


def test_list_jobs_newest_first_with_limit(
    sqlite_app: str, client: httpx.Client, ax_request: AxRequest, name: str
) -> None:
    ids = [
        client.post(f"{sqlite_app}/optimize", json=ax_request(f"{name}_{i}")).json()["job_id"]
        for i in range(3)
    ]
    listed = client.get(f"{sqlite_app}/jobs", params={"limit": 2}).json()
    assert [job["job_id"] for job in listed] == ids[::-1][:2]
    assert client.get(f"{sqlite_app}/jobs", params={"limit": 0}).status_code == 422


def test_timeout_fails_the_job_but_keeps_the_work_done_before_it(
    sqlite_app: str, client: httpx.Client, ax_request: AxRequest, name: str
) -> None:
    body = ax_request(name, n_trials=5, timeout=2.0)
    job_id = client.post(f"{sqlite_app}/optimize", json=body).json()["job_id"]
    time.sleep(0.5)  # pending time does not count: the clock starts at the first suggest
    started = time.monotonic()
    first = client.post(f"{sqlite_app}/studies/{name}/suggest").json()["trial_number"]
    running_by = time.monotonic()  # the job's clock started between `started` and now
    client.post(
        f"{sqlite_app}/studies/{name}/evaluate",
        json={"study_name": name, "trial_number": first, "value": 0.4},
    ).raise_for_status()
    late = client.post(f"{sqlite_app}/studies/{name}/suggest").json()["trial_number"]
    assert time.monotonic() - started < 2.0, "too slow to suggest before the 2 s timeout"
    time.sleep(max(0.0, running_by + 2.3 - time.monotonic()))

    error = "timeout of 2 s was reached after 1 of 5 trials were told"
    listed = client.get(f"{sqlite_app}/jobs").json()
    mine = next(job for job in listed if job["job_id"] == job_id)
    assert (mine["status"], mine["error"]) == ("failed", error)

    refused = client.post(f"{sqlite_app}/studies/{name}/suggest")
    assert refused.status_code == 409
    detail = refused.json()["detail"]
    assert error in detail
    assert f"GET /studies/{name}/results" in detail
    assert "POST /optimize" in detail

    told = client.post(
        f"{sqlite_app}/studies/{name}/evaluate",
        json={"study_name": name, "trial_number": late, "value": 0.9},
    )
    assert told.status_code == 200
    results = client.get(f"{sqlite_app}/studies/{name}/results").json()
    assert [(t["number"], t["state"]) for t in results["trials"]] == [
        (first, "COMPLETE"),
        (late, "COMPLETE"),
    ]
    assert results["best_value"] == 0.9

    job = client.get(f"{sqlite_app}/jobs/{job_id}").json()
    assert (job["status"], job["error"]) == ("failed", error)
    assert job["completed_at"] is not None
    assert job["progress"]["finished"] == 2
    # A failed job stays failed.
    cancelled = client.delete(f"{sqlite_app}/jobs/{job_id}")
    assert cancelled.status_code == 409
    assert error in cancelled.json()["detail"]
    assert client.get(f"{sqlite_app}/jobs/{job_id}").json()["status"] == "failed"
