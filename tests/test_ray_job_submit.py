"""``ray job submit`` of ``experiments/run_mipro.py`` against the CI's multi-node cluster.

Uses the ``ray`` CLI of this environment against the job server of the cluster `.ci/run`
starts (``MIPRO_RAY_TEST_DASHBOARD``, e.g. ``http://127.0.0.1:8265``); without it the tests are
skipped (``ray.init`` clusters of plain test sessions have no job server).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from mipro_ray.testing import FakeLLMServer, LandscapeTask

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")
TASK = LandscapeTask()


@pytest.fixture(scope="module")
def dashboard() -> str:
    url = os.environ.get("MIPRO_RAY_TEST_DASHBOARD")
    if not url:
        pytest.skip(
            "MIPRO_RAY_TEST_DASHBOARD is not set: these tests need a Ray cluster with the job "
            "server (.ci/run starts one)"
        )
    return url


@pytest.fixture
def working_dir(tmp_path: Path) -> Path:
    """What a laptop would upload: the entry script and a config directory."""
    wd = tmp_path / "wd"
    (wd / "experiments" / "configs").mkdir(parents=True)
    shutil.copy(REPO / "experiments" / "run_mipro.py", wd / "experiments" / "run_mipro.py")
    return wd


@pytest.fixture
def llm() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(responder=TASK, latency_s=0.05) as server:
        yield server


def write_config(wd: Path, server: FakeLLMServer, run_dir: Path, **optimizer: object) -> str:
    settings: dict[str, object] = {
        "auto": None,
        "num_candidates": 3,
        "num_trials": 3,
        "minibatch_size": 5,
        "max_bootstrapped_demos": 2,
        "max_labeled_demos": 2,
    }
    settings.update(optimizer)
    config = {
        "program": {
            "predictors": [
                {"name": "label", "signature": TASK.signature, "instruction": "Label the item."}
            ]
        },
        "data": {
            "train": {"examples": TASK.examples(0, 10)},
            "val": {"examples": TASK.examples(100, 10)},
            "test": {"examples": TASK.examples(300, 10)},
        },
        "student": {
            "model": "fake",
            "base_url": server.base_url,
            "api_key_env": None,
            "cache": False,
            "timeout_s": 10,
        },
        "optimizer": settings,
        "run_dir": str(run_dir),
    }
    name = f"fake-{uuid.uuid4().hex[:6]}.yaml"
    (wd / "experiments" / "configs" / name).write_text(yaml.safe_dump(config))
    return f"experiments/configs/{name}"


def ray_cli(*args: str, timeout: float = 120, check: bool = True) -> str:
    """Runs the ``ray`` CLI; with ``check`` a non-zero exit fails the test."""
    done = subprocess.run([RAY, *args], capture_output=True, text=True, timeout=timeout, env=_env())
    assert not check or done.returncode == 0, f"ray {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.setdefault("RAY_AUTH_MODE", "disabled")
    return env


def submit(dashboard: str, wd: Path, config: str) -> str:
    job_id = f"mipro-test-{uuid.uuid4().hex[:8]}"
    ray_cli(
        "job", "submit", "--address", dashboard, "--working-dir", str(wd),
        "--submission-id", job_id, "--no-wait", "--",
        sys.executable, "experiments/run_mipro.py", "--config", config,
    )  # fmt: skip
    return job_id


def job_status(dashboard: str, job_id: str) -> str:
    """The job's status name (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED)."""
    from ray.job_submission import JobSubmissionClient

    return str(JobSubmissionClient(dashboard).get_job_status(job_id).value)


def wait_status(dashboard: str, job_id: str, final: set[str], timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while True:
        status = job_status(dashboard, job_id)
        if status in final:
            return status
        assert time.monotonic() < deadline, f"job {job_id} still {status} after {timeout}s"
        time.sleep(2)


def test_a_submitted_run_finishes_with_results_in_its_run_dir(
    dashboard: str, working_dir: Path, llm: FakeLLMServer, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    job_id = submit(dashboard, working_dir, write_config(working_dir, llm, run_dir))

    status = wait_status(dashboard, job_id, {"SUCCEEDED", "FAILED", "STOPPED"})
    logs = ray_cli("job", "logs", "--address", dashboard, job_id, check=False)
    assert status == "SUCCEEDED", logs[-3000:]
    assert "validation score" in logs and "test score (10)" in logs
    assert "stop reason: completed 3 trials" in logs
    for name in ("best_program.json", "trials.parquet", "result.json", "report.md"):
        assert (run_dir / name).exists(), name
    assert llm.requests > 0


def test_ray_job_stop_stops_a_running_submission(
    dashboard: str, working_dir: Path, tmp_path: Path
) -> None:
    with FakeLLMServer(responder=TASK, latency_s=0.3) as slow:
        run_dir = tmp_path / "run"
        config = write_config(working_dir, slow, run_dir, num_trials=50, minibatch_size=10)
        job_id = submit(dashboard, working_dir, config)
        deadline = time.monotonic() + 240
        while not (run_dir / "candidates.json").exists():  # the search has started
            assert job_status(dashboard, job_id) in ("PENDING", "RUNNING")
            assert time.monotonic() < deadline, "the run never reached the search"
            time.sleep(1)

        ray_cli("job", "stop", "--address", dashboard, job_id)

        assert wait_status(dashboard, job_id, {"STOPPED", "FAILED", "SUCCEEDED"}, 60) == "STOPPED"
        time.sleep(3)  # trial actors die with their driver
        stopped_at = slow.requests
        time.sleep(3)
        assert slow.requests == stopped_at, "LLM traffic went on after ray job stop"
    assert not (run_dir / "result.json").exists()  # stopped, not finished: rerun resumes
