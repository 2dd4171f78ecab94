"""Concurrent evaluation against the fake OpenAI-compatible server."""

from __future__ import annotations

import pytest

from mipro_ray import LM, EvaluationError, LMConfig, Pipeline, evaluate
from mipro_ray.signature import Example, Prediction
from mipro_ray.testing import FakeLLMServer, FakeRequest


def _double(request: FakeRequest) -> str:
    value = int(request.messages[-1]["content"].split(":", 1)[1])
    if value == 7:
        return "I am not sure what you mean."  # malformed: no number anywhere
    return f"result: {value * 2}"


def _lm(server: FakeLLMServer, *, max_concurrency: int = 16) -> LM:
    return LM(
        LMConfig(
            model="fake",
            base_url=server.base_url,
            api_key_env=None,
            cache=False,
            structured_output="off",
            max_concurrency=max_concurrency,
        )
    )


def _exact(example: Example, prediction: Prediction) -> bool:
    return example["result"] == prediction.get("result")


PROGRAM = Pipeline.from_signatures("value:number -> result:number")
EXAMPLES: list[Example] = [{"value": i, "result": 2 * i} for i in range(200)]


async def test_keeps_the_concurrency_limit_full_and_isolates_a_malformed_answer() -> None:
    with FakeLLMServer(responder=_double, latency_s=0.1) as server:
        lm = _lm(server)
        result = await evaluate(PROGRAM, EXAMPLES, metric=_exact, lm=lm, concurrency=32)
        await lm.aclose()
        assert server.peak_in_flight == 16
        assert server.requests == 200
    assert len(result.records) == 200
    bad = result.records[7]
    assert bad.error_kind == "parse" and bad.score == 0.0
    assert "result" in (bad.error or "")
    assert all(r.score == 1.0 for r in result.records if r.index != 7)
    assert result.score == pytest.approx(199 / 200)
    assert result.errors == {"parse": 1}


async def test_a_metric_that_raises_stops_the_evaluation_with_its_message() -> None:
    def broken(example: Example, prediction: Prediction) -> float:
        raise ValueError("label column missing")

    with FakeLLMServer(responder=_double) as server:
        lm = _lm(server)
        with pytest.raises(EvaluationError, match="label column missing"):
            await evaluate(PROGRAM, EXAMPLES[:20], metric=broken, lm=lm, max_error_fraction=0.2)
        await lm.aclose()


async def test_lm_failures_within_the_budget_are_recorded_not_scored() -> None:
    with FakeLLMServer(responder=_double, fail_first=2, fail_status=400) as server:
        lm = _lm(server, max_concurrency=1)
        result = await evaluate(PROGRAM, EXAMPLES[10:20], metric=_exact, lm=lm, concurrency=1)
        await lm.aclose()
    assert result.errors.get("lm") == 2
    assert result.n_scored == 8
    assert result.score == 1.0
