"""One trial scored in this process: its outcome, and a stop that ends its LLM traffic."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import pytest
import ray

from mipro_ray import LMConfig, Pipeline, resolve_metric
from mipro_ray.ray_limiter import get_limiter_actor
from mipro_ray.search import baseline_choices
from mipro_ray.testing import FakeLLMServer, LandscapeTask
from mipro_ray.trial import TrialSpec, evaluate_config, score_config

pytestmark = pytest.mark.ray

TASK = LandscapeTask()


def _spec(server: FakeLLMServer, cap: int) -> TrialSpec:
    program = Pipeline.from_signatures(TASK.signature, instructions=["Label the item."])
    lm = LMConfig(
        model=f"trial-test-{uuid.uuid4().hex[:8]}",  # a limiter of its own
        base_url=server.base_url,
        api_key_env=None,
        cache=False,
        max_concurrency=cap,
        timeout_s=10,
    )
    return TrialSpec(
        program=program,
        valset=TASK.examples(100, 20),
        metric=resolve_metric("exact_match"),
        lm=lm,
        minibatch_size=5,
        concurrency=cap,
        max_error_fraction=0.5,
        seed=0,
    )


def _full_config(spec: TrialSpec) -> dict[str, object]:
    choices = baseline_choices(spec.program)
    program = {k: v.model_dump(mode="json") for k, v in choices.items()}
    return {"kind": "full", "params": {}, "program": program, "number": 3}


def test_a_trial_reports_its_score_and_every_llm_call(ray_address: str) -> None:
    with FakeLLMServer(responder=TASK, latency_s=0.02) as server:
        spec = _spec(server, cap=4)
        get_limiter_actor(spec.lm)
        outcome = score_config(_full_config(spec), spec)
        served = server.completed
    assert not outcome.failed and outcome.error is None
    assert 0.0 <= outcome.score <= 1.0
    assert outcome.n_examples == 20 == outcome.calls == served
    assert len(outcome.latencies_s) == served and all(t > 0 for t in outcome.latencies_s)
    assert outcome.prompt_tokens > 0 and outcome.completion_tokens > 0


def test_a_stopped_trial_fails_with_the_reason_and_its_llm_traffic_ends(
    ray_address: str,
) -> None:
    # 20 examples, 2 at a time, 0.3 s each: about 3 s unless stopped.
    with FakeLLMServer(responder=TASK, latency_s=0.3) as server:
        spec = _spec(server, cap=2)
        limiter = get_limiter_actor(spec.lm)
        stop_at = time.monotonic() + 0.5
        reason: list[str] = []

        def stopped() -> str | None:
            if time.monotonic() >= stop_at:
                reason.append("cancelled")
                return "cancelled"
            return None

        result: list[object] = []
        thread = threading.Thread(
            target=lambda: result.append(
                asyncio.run(evaluate_config(_full_config(spec), spec, stopped=stopped))
            )
        )
        thread.start()
        thread.join(timeout=30)
        returned = server.requests
        time.sleep(1.0)
        assert server.requests == returned, "LLM calls went on after the stop"
    (outcome,) = result
    assert reason, "the stop was never polled"
    assert outcome.failed and outcome.error == "stopped: cancelled"  # type: ignore[attr-defined]
    assert outcome.calls < 20  # type: ignore[attr-defined]
    stats = ray.get(limiter.stats.remote())
    assert stats.in_flight == 0, "a stopped trial kept limiter slots"
