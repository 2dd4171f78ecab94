"""One search trial: a program configuration scored on examples, in a Tune trial actor (or in
the run's driver, until the trial actors run; see `mipro_ray.search`).

A trial's Tune config carries the configuration itself (per predictor: the chosen instruction,
demos and temperature), not indices into the candidates, so trials need no candidates shipped
to them and the search can start its trial actors (and score the unoptimized program) while
the candidates are still being bootstrapped and proposed.

This module stays free of Optuna and of the searcher, so a trial actor imports only what
running a program needs.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable, Mapping

from pydantic import BaseModel, ConfigDict, Field
from ray import tune

from mipro_ray.errors import EvaluationError
from mipro_ray.evaluate import evaluate
from mipro_ray.limiter import Limiter
from mipro_ray.lm import LM, LMCall, LMConfig
from mipro_ray.metrics import Metric
from mipro_ray.program import ModelSettings, Program
from mipro_ray.ray_limiter import RayLimiter
from mipro_ray.signature import Example

__all__ = [
    "PredictorChoice",
    "TrialOutcome",
    "TrialSpec",
    "apply_choices",
    "evaluate_config",
    "minibatch_indices",
    "run_trial",
    "score_config",
]


class PredictorChoice(BaseModel):
    """What one trial sets on one predictor."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    instruction: str
    demos: list[Example]
    temperature: float | None = None


class TrialSpec(BaseModel):
    """What every trial needs (shipped once to each trial actor through the object store).

    Attributes:
        concurrency: Examples in flight within a minibatch trial; full evaluations use
            ``max(concurrency, lm.max_concurrency)`` so one of them alone can fill the limiter.
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    program: Program
    valset: list[Example]
    metric: Metric
    lm: LMConfig
    minibatch_size: int
    concurrency: int
    max_error_fraction: float
    seed: int


class TrialOutcome(BaseModel):
    """What a trial reports (to Tune from an actor; to the searcher from the driver).

    ``latencies_s`` (one per answered LM call) and ``error_kinds`` (one per call that finally
    failed) let the run's driver record the trial's LM calls in `mipro_ray.telemetry`: a trial
    actor's own metrics may never be exported (Tune kills the actors at the end of a run).
    Both are flat lists, which survive Tune's flattening of results. The counters default to
    0 for a trial that failed before it could count anything.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    score: float
    failed: bool
    error: str | None
    n_examples: int = 0
    calls: int = 0
    cache_hits: int = 0
    http_requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    duration_s: float = 0.0
    latencies_s: list[float] = Field(default_factory=list)
    error_kinds: list[str] = Field(default_factory=list)


_STOP_POLL_S = 0.1
_CHECK_IN_S = 0.25
"""How often a warm-up trial checks in with the driver (see `run_trial`)."""
WARMUP = "warmup"
"""The kind of a trial actor's first Tune trial (see `run_trial`)."""


def minibatch_indices(n_val: int, size: int, *, seed: int, number: int) -> list[int]:
    """The validation indices a minibatch trial scores (seeded by run seed and trial number)."""
    rng = random.Random(seed * 1_000_003 + number)
    return sorted(rng.sample(range(n_val), min(size, n_val)))


def apply_choices(program: Program, choices: Mapping[str, PredictorChoice]) -> Program:
    """Returns a copy of ``program`` with each named predictor's instruction, demos and
    temperature replaced by ``choices`` (predictors not named keep theirs)."""
    candidate = program.copy()
    for name, predictor in candidate.named_predictors().items():
        choice = choices.get(name)
        if choice is None:
            continue
        predictor.instruction = choice.instruction
        predictor.demos = [dict(d) for d in choice.demos]
        if choice.temperature is not None:
            predictor.settings = ModelSettings(
                temperature=choice.temperature,
                top_p=predictor.settings.top_p,
                max_tokens=predictor.settings.max_tokens,
            )
    return candidate


def run_trial(config: dict[str, object], spec: TrialSpec) -> None:
    """Tune function trainable: evaluates one configuration and reports a `TrialOutcome`.

    A trial actor's first trial is a warm-up (``kind`` `WARMUP`, no configuration): it waits
    until the endpoint's limiter answers, then checks in every `_CHECK_IN_S` until the
    driver's stopper ends it (each report waits for the driver to take it; a stop ends the
    trial there). Its actor then runs real trials without start-up delay.
    """
    if config["kind"] == WARMUP:
        asyncio.run(RayLimiter.for_config(spec.lm).ready())
        while True:
            tune.report({"score": math.nan, "warmup": 1})
            time.sleep(_CHECK_IN_S)
    tune.report(score_config(config, spec).model_dump())


def score_config(config: dict[str, object], spec: TrialSpec) -> TrialOutcome:
    """Scores one trial configuration in this process (a trial actor); see `evaluate_config`."""
    return asyncio.run(evaluate_config(config, spec))


async def evaluate_config(
    config: dict[str, object],
    spec: TrialSpec,
    *,
    stopped: Callable[[], str | None] | None = None,
    limiter: Limiter | None = None,
) -> TrialOutcome:
    """Scores one trial configuration on the running event loop (a trial actor's, or the
    driver's).

    Records no telemetry: the driver records the outcome's trial and LM calls.

    Args:
        config: The trial's Tune config.
        spec: What every trial needs.
        stopped: Polled while the trial runs (the driver's trials: Tune stops its actors'
            trials itself); when it returns a reason, the calls in flight are cancelled and
            the trial fails with that reason.
        limiter: The endpoint's limiter (default: the cluster's, `RayLimiter`).
    """
    start = time.perf_counter()
    raw = config["program"]
    assert isinstance(raw, dict)
    choices = {str(k): PredictorChoice.model_validate(v) for k, v in raw.items()}
    if config["kind"] == "minibatch":
        number = config["number"]
        assert isinstance(number, int)
        indices = minibatch_indices(
            len(spec.valset), spec.minibatch_size, seed=spec.seed, number=number
        )
        examples = [spec.valset[i] for i in indices]
        concurrency = spec.concurrency
    else:
        examples = spec.valset
        concurrency = max(spec.concurrency, spec.lm.max_concurrency)
    program = apply_choices(spec.program, choices)
    latencies: list[float] = []
    error_kinds: list[str] = []

    def observe(call: LMCall) -> None:
        if call.error_kind is None:
            latencies.append(call.latency_s)
        else:
            error_kinds.append(call.error_kind)

    own = RayLimiter.for_config(spec.lm) if limiter is None else None
    lm = LM(spec.lm, limiter=own or limiter, observer=observe)
    score, failed, error = 0.0, False, None
    task = asyncio.ensure_future(
        evaluate(
            program,
            examples,
            metric=spec.metric,
            lm=lm,
            concurrency=min(concurrency, max(len(examples), 1)),
            max_error_fraction=spec.max_error_fraction,
        )
    )
    try:
        while stopped is not None and not task.done():
            await asyncio.wait({task}, timeout=_STOP_POLL_S)
            reason = None if task.done() else stopped()
            if reason is not None:
                task.cancel()
                failed, error = True, f"stopped: {reason}"
                break
        score = (await task).score
    except EvaluationError as exc:
        failed, error = True, str(exc)
    except asyncio.CancelledError:
        if error is None:  # not our cancellation: propagate it
            raise
    finally:
        usage = lm.usage
        await lm.aclose()
        if own is not None:
            await own.aclose()
    return TrialOutcome(
        score=score,
        failed=failed,
        error=error,
        n_examples=len(examples),
        calls=usage.calls,
        cache_hits=usage.cache_hits,
        http_requests=usage.http_requests,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cost_usd=usage.cost_usd,
        duration_s=time.perf_counter() - start,
        latencies_s=latencies,
        error_kinds=error_kinds,
    )
