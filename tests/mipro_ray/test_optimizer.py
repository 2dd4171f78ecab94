"""End-to-end MIPRO runs on the session's Ray cluster against the fake LLM server.

The fake server answers a synthetic task whose landscape is known (`LandscapeTask`): some
instructions (those with the hint keyword) and demo sets are truly better, and answers are
deterministic per prompt, so what the optimizer finds can be checked against an oracle.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mipro_ray import (
    LM,
    MIPRO,
    Budget,
    LMConfig,
    MiproSettings,
    Pipeline,
    Program,
    RunEvent,
    evaluate,
    resolve_metric,
)
from mipro_ray.errors import StorageError
from mipro_ray.signature import Example, Prediction
from mipro_ray.testing import FakeLLMServer, FakeRequest, LandscapeTask, requested_fields

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TASK = LandscapeTask()
TRAIN = TASK.examples(0, 40)
VAL = TASK.examples(100, 40)
TEST = TASK.examples(1000, 200)


def _lm(server: FakeLLMServer, **overrides: object) -> LMConfig:
    settings: dict[str, object] = {
        "model": "fake",
        "base_url": server.base_url,
        "api_key_env": None,
        "cache": False,
        "max_concurrency": 16,
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.05,
        "timeout_s": 10,
    }
    settings.update(overrides)
    return LMConfig.model_validate(settings)


def _program() -> Pipeline:
    return Pipeline.from_signatures(TASK.signature, instructions=["Label the item."])


def _is_bootstrap(request: FakeRequest) -> bool:
    """A teacher run on a train item (train items are numbered below 100)."""
    if requested_fields(request) != ["label"]:
        return False
    item = request.messages[-1]["content"].rsplit(" ", 1)[-1]
    return item.isdigit() and int(item) < 100


def _is_meta(request: FakeRequest) -> bool:
    return requested_fields(request) != ["label"]


async def _test_accuracy(program: Program, server: FakeLLMServer) -> float:
    lm = LM(_lm(server))
    try:
        result = await evaluate(program, TEST, metric=resolve_metric("exact_match"), lm=lm)
    finally:
        await lm.aclose()
    return result.score


def test_optimized_program_beats_the_baseline_and_the_limiter_holds(
    ray_address: str, tmp_path: Path
) -> None:
    with FakeLLMServer(responder=TASK, latency_s=0.05, max_concurrency=8) as server:
        events: list[RunEvent] = []

        def on_event(event: RunEvent) -> None:
            events.append(event)
            if event.kind == "phase" and event.progress.phase == "searching":
                server.reset_stats()  # the peak below is the search's own

        mipro = MIPRO(
            student=_lm(server, max_concurrency=8),
            metric="exact_match",
            settings=MiproSettings(
                num_candidates=6,
                num_trials=15,
                minibatch_size=20,
                max_concurrent_trials=4,
                seed=3,
            ),
            run_dir=str(tmp_path / "run"),
            on_event=on_event,
        )
        result = mipro.compile(_program(), trainset=TRAIN, valset=VAL)

        # The shared limiter of 8 held across 4 concurrent trials, and kept the pipe full.
        assert server.peak_in_flight == 8
        assert 429 not in server.by_status

        baseline = _program()
        optimized_acc = asyncio.run(_test_accuracy(result.program, server))
        baseline_acc = asyncio.run(_test_accuracy(baseline, server))

    best = result.program.named_predictors()["predict"]
    assert optimized_acc >= baseline_acc + 0.15, (optimized_acc, baseline_acc)
    assert TASK.expected_accuracy(best.instruction, best.demos) >= 0.3 + 0.15
    assert result.baseline_score is not None and result.best_score is not None
    assert result.best_score > result.baseline_score

    kinds = [t.kind for t in sorted(result.trials, key=lambda t: t.number)]
    assert kinds[0] == "baseline"
    assert kinds.count("minibatch") == 15
    assert 3 <= kinds.count("full") <= 4  # every 5 trials, plus the end if a config is left
    full_keys = [json.dumps(t.params, sort_keys=True) for t in result.trials if t.kind == "full"]
    assert len(full_keys) == len(set(full_keys)), "a configuration was fully evaluated twice"
    assert all(t.n_examples == 20 for t in result.trials if t.kind == "minibatch")
    assert all(t.n_examples == len(VAL) for t in result.trials if t.kind != "minibatch")
    assert result.stop_reason == "completed 15 trials"
    assert [e.progress.phase for e in events if e.kind == "phase"] == [
        "bootstrapping",
        "proposing",
        "searching",
        "finished",
    ]

    run_dir = tmp_path / "run"
    rows = pq.read_table(run_dir / "trials.parquet").to_pylist()
    assert len(rows) == len(result.trials)
    saved = json.loads((run_dir / "best_program.json").read_text())
    assert saved["predictors"]["predict"]["instruction"] == best.instruction
    ax = json.loads((run_dir / "best_program.ax.json").read_text())
    assert ax["instruction"] == best.instruction
    usage = json.loads((run_dir / "usage.json").read_text())
    assert usage["total"]["calls"] == result.usage.calls


_DRIVER = textwrap.dedent(
    """
    import sys
    import ray
    from mipro_ray import MIPRO, LMConfig, MiproSettings, Pipeline
    from mipro_ray.testing import LandscapeTask

    address, base_url, run_dir = sys.argv[1:4]
    task = LandscapeTask()
    ray.init(address=address, log_to_driver=False)
    lm = LMConfig(model="fake", base_url=base_url, api_key_env=None, cache=False,
                  max_concurrency=8, timeout_s=5)
    program = Pipeline.from_signatures(task.signature, instructions=["Label the item."])
    settings = MiproSettings(num_candidates=4, num_trials=12, minibatch_size=10,
                             max_concurrent_trials=2, seed=1)
    result = MIPRO(student=lm, metric="exact_match", settings=settings, run_dir=run_dir).compile(
        program, trainset=task.examples(0, 30), valset=task.examples(100, 30))
    print("STOP", result.stop_reason)
    """
)


def _trial_rows(run_dir: Path) -> list[dict[str, object]]:
    path = run_dir / "trials.parquet"
    return pq.read_table(path).to_pylist() if path.exists() else []


def test_a_run_killed_mid_search_resumes_without_repeating_work(
    ray_address: str, tmp_path: Path
) -> None:
    script = tmp_path / "driver.py"
    script.write_text(_DRIVER)
    run_dir = tmp_path / "run"
    with FakeLLMServer(responder=TASK, latency_s=0.1) as server:
        args = [sys.executable, str(script), ray_address, server.base_url, str(run_dir)]
        first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while sum(1 for r in _trial_rows(run_dir) if r["kind"] == "minibatch") < 3:
            assert first.poll() is None, first.stdout.read().decode()[-3000:]  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the first run made no progress"
            time.sleep(0.2)
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        before = _trial_rows(run_dir)
        done_before = sum(1 for r in before if r["kind"] == "minibatch")
        assert 3 <= done_before < 12, "the kill must land mid-search"
        bootstrap_calls = sum(1 for r in server.received if _is_bootstrap(r))
        meta_calls = sum(1 for r in server.received if _is_meta(r))
        assert bootstrap_calls > 0 and meta_calls > 0

        second = subprocess.run(args, capture_output=True, text=True, timeout=300)
        assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
        assert "STOP completed 12 trials" in second.stdout

        # No bootstrap or proposal call was repeated.
        assert sum(1 for r in server.received if _is_bootstrap(r)) == bootstrap_calls
        assert sum(1 for r in server.received if _is_meta(r)) == meta_calls

    after = _trial_rows(run_dir)
    assert sum(1 for r in after if r["kind"] == "minibatch") == 12
    assert sum(1 for r in after if r["kind"] == "baseline") == 1
    # Finished trials were kept as they were, not rerun.
    assert after[: len(before)] == before
    numbers = [r["number"] for r in after]
    assert len(numbers) == len(set(numbers))


def test_flaky_llm_still_finishes_with_exact_usage_accounting(
    ray_address: str, tmp_path: Path
) -> None:
    with FakeLLMServer(
        responder=TASK, latency_s=0.02, failure_rate=0.3, failure_statuses=(429, 500), seed=7
    ) as server:
        settings = MiproSettings(
            num_candidates=3, num_trials=4, minibatch_size=10, max_concurrent_trials=2
        )
        result = MIPRO(
            student=_lm(server, max_retries=12),
            metric="exact_match",
            settings=settings,
            run_dir=str(tmp_path / "run"),
        ).compile(_program(), trainset=TRAIN[:20], valset=VAL[:20])
        statuses = dict(server.by_status)
        requests = server.requests

    assert result.stop_reason == "completed 4 trials"
    assert all(t.state == "complete" for t in result.trials)
    assert statuses.get(429, 0) > 0 and statuses.get(500, 0) > 0
    # Every answered request is one counted call; every HTTP attempt is counted once.
    assert result.usage.calls == statuses[200]
    assert result.usage.http_requests == requests
    assert result.usage.errors == {}


def test_a_metric_that_raises_fails_trials_with_its_message(
    ray_address: str, tmp_path: Path
) -> None:
    def no_gold(example: Example, prediction: Prediction) -> float:
        raise ValueError("gold label is missing")

    with FakeLLMServer(responder=TASK) as server:
        settings = MiproSettings(
            num_candidates=2, num_trials=2, minibatch_size=5, max_concurrent_trials=2
        )
        result = MIPRO(
            student=_lm(server), metric=no_gold, settings=settings, run_dir=str(tmp_path / "r")
        ).compile(_program(), trainset=TRAIN[:10], valset=VAL[:10])

    assert result.trials, "trials must be recorded"
    assert all(t.state == "failed" for t in result.trials)
    assert all(t.score is None for t in result.trials)
    assert all("gold label is missing" in (t.error or "") for t in result.trials)
    assert result.best_score is None


def test_same_seed_same_candidates_and_budget_stops_the_search(
    ray_address: str, tmp_path: Path
) -> None:
    with FakeLLMServer(responder=TASK) as server:
        candidates = []
        for name in ("a", "b"):
            settings = MiproSettings(
                num_candidates=4,
                num_trials=30,
                minibatch_size=5,
                max_concurrent_trials=1,
                seed=11,
                budget=Budget(max_calls=120),
            )
            result = MIPRO(
                student=_lm(server),
                metric="exact_match",
                settings=settings,
                run_dir=str(tmp_path / name),
            ).compile(_program(), trainset=TRAIN, valset=VAL[:10])
            assert result.stop_reason.startswith("budget: ")
            assert sum(1 for t in result.trials if t.kind == "minibatch") < 30
            saved = json.loads((tmp_path / name / "candidates.json").read_text())
            candidates.append(saved["candidates"])
    assert candidates[0] == candidates[1]


def test_cancel_stops_the_run_promptly(ray_address: str, tmp_path: Path) -> None:
    with FakeLLMServer(responder=TASK, latency_s=0.2) as server:
        cancel = threading.Event()

        def on_event(event: RunEvent) -> None:
            if event.kind == "trial":
                cancel.set()

        settings = MiproSettings(
            num_candidates=3, num_trials=40, minibatch_size=10, max_concurrent_trials=2
        )
        mipro = MIPRO(
            student=_lm(server),
            metric="exact_match",
            settings=settings,
            run_dir=str(tmp_path / "run"),
            on_event=on_event,
            cancel=cancel,
        )
        result = mipro.compile(_program(), trainset=TRAIN[:10], valset=VAL[:20])
        stopped_at = server.requests
        time.sleep(1.0)
        assert server.requests == stopped_at, "LLM traffic went on after the cancellation"
    assert result.stop_reason == "cancelled"
    assert sum(1 for t in result.trials if t.kind == "minibatch") < 40


_FRESH_CLUSTER_DRIVER = textwrap.dedent(
    """
    import sys, threading, time
    import ray
    from mipro_ray import MIPRO, LMConfig, MiproSettings, Pipeline
    from mipro_ray.testing import LandscapeTask

    def report_ray_up():
        while not ray.is_initialized():
            time.sleep(0.02)
        print("RAY_UP", time.time(), flush=True)

    threading.Thread(target=report_ray_up, daemon=True).start()
    base_url, run_dir = sys.argv[1:3]
    task = LandscapeTask()
    lm = LMConfig(model="fake", base_url=base_url, api_key_env=None, cache=False,
                  max_concurrency=6, timeout_s=5)
    program = Pipeline.from_signatures(task.signature, instructions=["Label the item."])
    settings = MiproSettings(num_candidates=3, num_trials=4, minibatch_size=10,
                             max_concurrent_trials=2, seed=1)
    result = MIPRO(student=lm, metric="exact_match", settings=settings, run_dir=run_dir,
                   ray_address="local").compile(
        program, trainset=task.examples(0, 30), valset=task.examples(100, 20))
    print("STOP", result.stop_reason, flush=True)
    baselines = [t for t in result.trials if t.kind == "baseline"]
    print("BASELINES", len(baselines), baselines[0].n_examples, baselines[0].number,
          result.baseline_score, flush=True)
    """
)


def test_a_run_on_its_own_new_cluster_prepares_while_ray_starts_and_keeps_the_cap(
    tmp_path: Path,
) -> None:
    """Bootstrapping starts before the new local cluster is up (seconds saved); the driver's
    in-process limiter hands over to the cluster limiter without exceeding the cap."""
    script = tmp_path / "driver.py"
    script.write_text(_FRESH_CLUSTER_DRIVER)
    arrivals: list[float] = []

    def responder(request: FakeRequest) -> str:
        arrivals.append(time.time())
        return TASK(request)

    with FakeLLMServer(responder=responder, latency_s=0.1, max_concurrency=6) as server:
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        run = subprocess.run(
            [sys.executable, str(script), server.base_url, str(tmp_path / "run")],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        assert "STOP completed 4 trials" in run.stdout
        assert 429 not in server.by_status, "the cap of 6 was exceeded"
        assert server.peak_in_flight <= 6

    ray_up = float(run.stdout.split("RAY_UP", 1)[1].split()[0])
    early = sum(1 for t in arrivals if t < ray_up)
    assert early > 0, "no LLM call was made while the cluster started"
    # One baseline over the whole validation set, as trial 0, with a score (the driver
    # scores it while the cluster starts).
    count, n_examples, number, score = run.stdout.split("BASELINES", 1)[1].split()[:4]
    assert (count, n_examples, number) == ("1", "20", "0")
    assert 0.0 <= float(score) <= 1.0


def test_a_study_storage_that_cannot_open_fails_the_run_with_the_reason(tmp_path: Path) -> None:
    """The storage opens alongside the preparation; when it cannot, the run stops with a
    clear error at once (the preparation is cancelled, its LLM calls stop)."""
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the database's directory should be")
    with FakeLLMServer(responder=TASK, latency_s=0.05) as server:
        mipro = MIPRO(
            student=_lm(server),
            metric="exact_match",
            settings=MiproSettings(num_candidates=3, num_trials=4, minibatch_size=10),
            run_dir=str(tmp_path / "run"),
            storage_url=f"sqlite:///{blocked}/study.db",
        )
        with pytest.raises(StorageError, match="cannot open the study storage"):
            mipro.compile(_program(), trainset=TRAIN[:10], valset=VAL[:20])
        stopped_at = server.requests
        time.sleep(1.0)
        assert server.requests == stopped_at, "LLM traffic went on after the failure"
