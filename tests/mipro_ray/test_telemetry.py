"""Custom metrics reach the nodes' Prometheus endpoints after a run."""

from __future__ import annotations

import os
import re
import time
import uuid
from pathlib import Path

import httpx
import pytest

from mipro_ray import MIPRO, LMConfig, MiproSettings, Pipeline
from mipro_ray.testing import FakeLLMServer, LandscapeTask

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TASK = LandscapeTask()
_SAMPLE = re.compile(r"^(\w+)\{([^}]*)\} ([0-9.eE+\-]+)$")


def _metrics_urls() -> list[str]:
    """Every node's Prometheus endpoint (the CI head's port first when it is given)."""
    import ray

    ports = {int(n["MetricsExportPort"]) for n in ray.nodes() if n["Alive"]}
    hosts = {int(n["MetricsExportPort"]): n["NodeManagerAddress"] for n in ray.nodes()}
    urls = [f"http://{hosts[p]}:{p}/metrics" for p in sorted(ports)]
    ci_port = os.environ.get("MIPRO_RAY_TEST_METRICS_PORT")
    if ci_port:
        assert int(ci_port) in ports, f"no node exports metrics on {ci_port}: {ports}"
    return urls


def _scrape(urls: list[str], metric: str, **labels: str) -> float:
    """Sum of a metric's samples (over nodes) whose labels include ``labels``."""
    total = 0.0
    for url in urls:
        for line in httpx.get(url, timeout=10).text.splitlines():
            match = _SAMPLE.match(line)
            if not match or match.group(1) not in (metric, f"{metric}_total"):
                continue
            pairs = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
            if all(pairs.get(k) == v for k, v in labels.items()):
                total += float(match.group(3))
    return total


def test_llm_call_and_trial_metrics_are_exported_with_plausible_values(
    ray_address: str, tmp_path: Path
) -> None:
    model = f"telemetry-{uuid.uuid4().hex[:8]}"  # this test's own label values
    run_dir = tmp_path / f"run-{uuid.uuid4().hex[:8]}"
    with FakeLLMServer(responder=TASK, latency_s=0.02) as server:
        student = LMConfig(
            model=model, base_url=server.base_url, api_key_env=None, cache=False, timeout_s=10
        )
        settings = MiproSettings(
            auto=None, num_candidates=3, num_trials=4, minibatch_size=5, max_concurrent_trials=2
        )
        program = Pipeline.from_signatures(TASK.signature, instructions=["Label the item."])
        result = MIPRO(
            student=student, metric="exact_match", settings=settings, run_dir=str(run_dir)
        ).compile(program, trainset=TASK.examples(0, 10), valset=TASK.examples(100, 10))
        served = server.completed

    urls = _metrics_urls()
    calls = trials = best = 0.0
    deadline = time.monotonic() + 60  # every process exports every few seconds
    while time.monotonic() < deadline:
        calls = _scrape(urls, "ray_mipro_llm_calls", model=model)
        trials = _scrape(urls, "ray_mipro_trials_finished", kind="minibatch")
        # The best score is the driver's gauge, set at the last record: exported last.
        best = _scrape(urls, "ray_mipro_best_score", run=run_dir.name, kind="full")
        if calls >= served and trials >= 4 and best == pytest.approx(result.best_score):
            break
        time.sleep(2)
    assert calls == served == result.usage.calls, (calls, served, result.usage.calls)
    assert trials >= 4
    assert _scrape(urls, "ray_mipro_trials_started", kind="minibatch") >= 4
    tokens = _scrape(urls, "ray_mipro_llm_tokens", model=model)
    assert tokens == result.usage.prompt_tokens + result.usage.completion_tokens
    assert _scrape(urls, "ray_mipro_llm_latency_seconds_count", model=model) == served
    assert best == pytest.approx(result.best_score)
