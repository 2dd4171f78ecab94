"""The ``/mipro/jobs`` HTTP API end to end: real Serve app, job actors, fake LLM server."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from mipro_ray.testing import FakeLLMServer, LandscapeTask
from serve_app.settings import Settings

if TYPE_CHECKING:
    from tests.serve_app.conftest import ServeHarness

pytestmark = [pytest.mark.ray]

TEST_ACTOR_NAMESPACE = "mipro_ray_serve_tests"  # the serve conftest's: its teardown kills them

TASK = LandscapeTask()
APP = "mjobs"


@pytest.fixture(scope="module")
def jobs_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(data_dir=tmp_path_factory.mktemp("mjobs"), actor_namespace=TEST_ACTOR_NAMESPACE)


@pytest.fixture(scope="module")
def jobs_app(serve_harness: ServeHarness, jobs_settings: Settings) -> str:
    """Base URL of an app whose operator left custom code disabled (the default)."""
    return serve_harness.deploy(APP, jobs_settings)


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(responder=TASK, latency_s=0.02) as server:
        yield server


def job_spec(server: FakeLLMServer, **optimizer: Any) -> dict[str, Any]:
    """A small valid job body against ``server``."""
    settings: dict[str, Any] = {
        "auto": None,
        "num_candidates": 3,
        "num_trials": 4,
        "minibatch_size": 5,
        "max_concurrent_trials": 2,
        "max_bootstrapped_demos": 2,
        "max_labeled_demos": 2,
    }
    settings.update(optimizer)
    return {
        "program": {
            "predictors": [
                {"name": "label", "signature": TASK.signature, "instruction": "Label the item."}
            ]
        },
        "data": {
            "train": {"examples": TASK.examples(0, 10)},
            "val": {"examples": TASK.examples(100, 10)},
        },
        "metric": {"name": "exact_match"},
        "student": {
            "model": "fake",
            "base_url": server.base_url,
            "api_key_env": None,
            "cache": False,
            "timeout_s": 10,
            "backoff_base_s": 0.01,
            "backoff_max_s": 0.05,
        },
        "optimizer": settings,
    }


def sse_events(client: httpx.Client, url: str, timeout: float = 240) -> list[tuple[str, Any]]:
    """Reads an SSE stream to its end: (event name, decoded data) pairs, keep-alives skipped."""
    events: list[tuple[str, Any]] = []
    name, data = "message", ""
    deadline = time.monotonic() + timeout
    with client.stream("GET", url, timeout=httpx.Timeout(60, read=60)) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            assert time.monotonic() < deadline, f"stream still open after {timeout}s: {events}"
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
            elif line == "" and data:
                events.append((name, json.loads(data)))
                name, data = "message", ""
    return events


def wait_for(client: httpx.Client, url: str, predicate: Any, timeout: float = 180) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(url).json()
        if predicate(body):
            return body
        assert time.monotonic() < deadline, f"timed out waiting; last status {body}"
        time.sleep(0.5)


# -- validation (no job starts) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (lambda s: s["student"].pop("model"), "student.model"),
        (lambda s: s["optimizer"].update(num_trials=0), "optimizer.num_trials"),
        (lambda s: s["program"]["predictors"][0].update(name="bad name"), "name"),
        (lambda s: s.update(run_dir="/etc"), "run_dir"),
        (lambda s: s["data"].update(train={}), "data.train"),
    ],
)
def test_invalid_specs_get_422_naming_the_field(
    jobs_app: str, client: httpx.Client, llm: FakeLLMServer, mutate: Any, path: str
) -> None:
    spec = job_spec(llm)
    mutate(spec)
    response = client.post(f"{jobs_app}/mipro/jobs", json=spec)
    assert response.status_code == 422, response.text
    assert path in response.json()["detail"]


def test_a_malformed_signature_gets_422_naming_the_predictor(
    jobs_app: str, client: httpx.Client, llm: FakeLLMServer
) -> None:
    spec = job_spec(llm)
    spec["program"]["predictors"][0]["signature"] = "question -> "
    response = client.post(f"{jobs_app}/mipro/jobs", json=spec)
    assert response.status_code == 422
    assert "program.predictors 'label'" in response.json()["detail"]


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (lambda s: s["student"].update(api_key_env="sk-proj-abcdefghijklmnop1234"), "student"),
        (lambda s: s["student"].update(api_key="sk-proj-abcdefghijklmnop1234"), "student.api_key"),
        (
            lambda s: s.update(teacher={**s["student"], "base_url": "https://u:sk-x1@host/v1"}),
            "teacher.base_url",
        ),
    ],
)
def test_literal_api_keys_are_refused_and_never_echoed(
    jobs_app: str, client: httpx.Client, llm: FakeLLMServer, mutate: Any, path: str
) -> None:
    spec = job_spec(llm)
    mutate(spec)
    response = client.post(f"{jobs_app}/mipro/jobs", json=spec)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert path in detail and "environment variable" in detail
    assert "sk-proj" not in response.text and "sk-x1" not in response.text


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (lambda s: s["metric"].update(name="os:system"), "metric.name"),
        (lambda s: s.update(program={"class_path": "mypkg:MyProgram"}), "program.class_path"),
    ],
)
def test_custom_code_is_forbidden_unless_the_operator_allows_it(
    jobs_app: str, client: httpx.Client, llm: FakeLLMServer, mutate: Any, path: str
) -> None:
    spec = job_spec(llm)
    mutate(spec)
    response = client.post(f"{jobs_app}/mipro/jobs", json=spec)
    assert response.status_code == 403
    assert path in response.json()["detail"]
    assert "MIPRO_RAY_ALLOW_CUSTOM_CODE" in response.json()["detail"]


def test_unknown_jobs_are_404(jobs_app: str, client: httpx.Client) -> None:
    for method, suffix in [("GET", ""), ("GET", "/result"), ("GET", "/events"), ("DELETE", "")]:
        response = client.request(method, f"{jobs_app}/mipro/jobs/nope{suffix}")
        assert response.status_code == 404, (method, suffix)


# -- running jobs --------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_job_runs_streams_its_events_and_serves_its_result(
    jobs_app: str, client: httpx.Client, llm: FakeLLMServer, jobs_settings: Settings
) -> None:
    created = client.post(f"{jobs_app}/mipro/jobs", json=job_spec(llm))
    assert created.status_code == 202, created.text
    job = created.json()
    job_id = job["job_id"]
    assert job["phase"] == "queued"
    early = client.get(f"{jobs_app}/mipro/jobs/{job_id}/result")
    assert early.status_code == 409 and "ready when it ends" in early.json()["detail"]

    events = sse_events(client, f"{jobs_app}/mipro/jobs/{job_id}/events")

    phases = [data["progress"]["phase"] for name, data in events if name == "phase"]
    assert phases == ["bootstrapping", "proposing", "searching", "finished"]
    trials = [data["trial"] for name, data in events if name == "trial"]
    assert sum(1 for t in trials if t["kind"] == "minibatch") == 4
    assert [t["kind"] for t in trials].count("baseline") == 1
    assert all(t["state"] == "complete" and t["score"] is not None for t in trials)
    assert [data["seq"] for name, data in events if name != "end"] == list(range(len(events) - 1))
    name, final = events[-1]
    assert name == "end" and final["phase"] == "finished"

    status = client.get(f"{jobs_app}/mipro/jobs/{job_id}").json()
    assert status["phase"] == "finished" and status["trials_done"] == 4
    assert status["trials_planned"] == 4 and status["calls"] > 0 and status["tokens"] > 0
    assert status["best_full_score"] is not None and status["elapsed_s"] > 0
    assert status["error"] is None and status["eta_s"] is None

    result = client.get(f"{jobs_app}/mipro/jobs/{job_id}/result")
    assert result.status_code == 200
    body = result.json()
    assert body["best_score"] == status["best_full_score"]
    assert body["program"]["predictors"]["label"]["instruction"]
    assert (
        body["ax_program"]["instruction"] == body["program"]["predictors"]["label"]["instruction"]
    )
    listed = client.get(f"{jobs_app}/mipro/jobs").json()
    assert job_id in [j["job_id"] for j in listed]
    # After the actor exits, the run directory serves the same answers.
    run_dir = Path(jobs_settings.resolved_jobs_dir) / job_id
    assert (run_dir / "job_status.json").exists() and (run_dir / "best_program.json").exists()
    time.sleep(3)
    replay = sse_events(client, f"{jobs_app}/mipro/jobs/{job_id}/events?after=2")
    assert [d.get("seq") for _, d in replay[:-1]] == list(range(2, len(events) - 1))
    assert client.get(f"{jobs_app}/mipro/jobs/{job_id}").json()["phase"] == "finished"


@pytest.mark.slow
def test_cancelling_a_job_mid_search_stops_its_llm_traffic(
    jobs_app: str, client: httpx.Client
) -> None:
    with FakeLLMServer(responder=TASK, latency_s=0.2) as slow:
        spec = job_spec(slow, num_trials=60, minibatch_size=10)
        job_id = client.post(f"{jobs_app}/mipro/jobs", json=spec).json()["job_id"]
        url = f"{jobs_app}/mipro/jobs/{job_id}"
        wait_for(client, url, lambda s: s["phase"] == "searching" and s["trials_done"] >= 1)

        cancelled = client.delete(url, params={"wait": 60})
        assert cancelled.status_code == 200
        status = cancelled.json()
        assert status["phase"] == "cancelled", status
        assert status["cancel_requested"] and status["stop_reason"] == "cancelled"
        stopped_at = slow.requests
        time.sleep(3)
        assert slow.requests == stopped_at, "LLM traffic went on after the cancellation"

    assert 1 <= status["trials_done"] < 60
    result = client.get(f"{url}/result")
    assert result.status_code == 200, result.text  # what finished is kept
    assert result.json()["phase"] == "cancelled"
    again = client.delete(url)
    assert again.status_code == 200 and again.json()["phase"] == "cancelled"


@pytest.mark.slow
def test_a_job_survives_a_serve_redeploy(
    serve_harness: ServeHarness,
    jobs_app: str,
    jobs_settings: Settings,
    client: httpx.Client,
    llm: FakeLLMServer,
) -> None:
    from ray import serve

    spec = job_spec(llm, num_trials=6)
    job_id = client.post(f"{jobs_app}/mipro/jobs", json=spec).json()["job_id"]
    url = f"{jobs_app}/mipro/jobs/{job_id}"
    wait_for(client, url, lambda s: s["phase"] in ("proposing", "searching"))

    serve.delete(APP)
    assert client.get(url).status_code == 404  # the app is gone; the job is not
    serve_harness.deploy(APP, jobs_settings)

    final = wait_for(client, url, lambda s: s["phase"] in ("finished", "failed", "cancelled"))
    assert final["phase"] == "finished", final
    assert final["trials_done"] == 6
    assert client.get(f"{url}/result").status_code == 200
