"""Concurrent evaluation of a program on examples.

Examples run concurrently under a limit (a fixed pool of asyncio workers, so memory does not
grow with the dataset). Each example yields an `ExampleRecord`; one example's failure never
aborts the others. How failures count:

- ``parse``: the LM answered but not in the output format. That is the program's (prompt's)
  fault, so the example scores 0 like any wrong answer, and the error is kept on the record.
- ``lm`` (the call failed after retries), ``metric`` (the metric raised) and ``program`` (user
  ``forward`` code raised): the example is not scored. These count against the error budget:
  when more than ``max_error_fraction`` of the examples fail this way, the evaluation stops
  and raises `EvaluationError` saying why, so a broken setup is reported, never scored as 0.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import Counter
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from mipro_ray.errors import EvaluationError, LMError, MetricError, MiproError, ParseError
from mipro_ray.lm import LM
from mipro_ray.metrics import Metric, score
from mipro_ray.program import Program, TraceStep
from mipro_ray.signature import Example, Prediction

logger = logging.getLogger(__name__)

_UNSCORED_KINDS = ("lm", "metric", "program")


class ExampleRecord(BaseModel):
    """The outcome of one example.

    Attributes:
        index: Position of the example in the evaluated list.
        prediction: The parsed prediction, if the program produced one.
        score: The metric's score; 0 for a parse failure; ``None`` when unscored.
        error: What went wrong, if anything.
        error_kind: ``parse``, ``lm``, ``metric`` or ``program``.
        trace: Predictor calls of this run (only when traces were asked for).
    """

    model_config = ConfigDict(frozen=True)

    index: int
    prediction: Prediction | None = None
    score: float | None = None
    error: str | None = None
    error_kind: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    trace: list[TraceStep] = Field(default_factory=list)


class EvaluationResult(BaseModel):
    """Per-example records and the aggregate score.

    Attributes:
        score: Mean score over scored examples (parse failures count as 0); 0.0 if none scored.
        n_scored: Examples that received a score.
        errors: Counts of failed examples by error kind.
    """

    model_config = ConfigDict(frozen=True)

    records: list[ExampleRecord]
    score: float
    n_scored: int
    errors: dict[str, int]

    @property
    def prompt_tokens(self) -> int:
        """Prompt tokens of all examples."""
        return sum(r.prompt_tokens for r in self.records)

    @property
    def completion_tokens(self) -> int:
        """Completion tokens of all examples."""
        return sum(r.completion_tokens for r in self.records)


async def evaluate(
    program: Program,
    examples: Sequence[Example],
    *,
    metric: Metric,
    lm: LM,
    concurrency: int = 16,
    max_error_fraction: float = 0.5,
    keep_traces: bool = False,
    rollout_id: str | int | None = None,
) -> EvaluationResult:
    """Evaluates ``program`` on ``examples`` with at most ``concurrency`` examples in flight.

    Args:
        program: The program to run.
        examples: Labelled examples.
        metric: ``(example, prediction) -> float | bool``.
        lm: The LM every predictor calls.
        concurrency: Maximum examples running at once.
        max_error_fraction: Stop with `EvaluationError` once more than this fraction of the
            examples failed with an ``lm``, ``metric`` or ``program`` error.
        keep_traces: Keep each example's predictor trace on its record.
        rollout_id: Passed to every LM request (fresh samples when it changes).

    Raises:
        EvaluationError: the error budget was exceeded.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    n = len(examples)
    records: list[ExampleRecord | None] = [None] * n
    budget = math.floor(max_error_fraction * n)
    failures: Counter[str] = Counter()
    first_failure: list[str] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)

    async def worker() -> None:
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            record = await _run_one(program, examples[i], i, metric, lm, keep_traces, rollout_id)
            records[i] = record
            if record.error_kind in _UNSCORED_KINDS:
                failures[record.error_kind] += 1
                if not first_failure:
                    first_failure.append(record.error or "")
                if sum(failures.values()) > budget:
                    raise EvaluationError(_budget_message(failures, n, first_failure[0]))

    workers = [asyncio.ensure_future(worker()) for _ in range(min(concurrency, max(n, 1)))]
    try:
        await asyncio.gather(*workers)
    except BaseException:
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        raise
    done = [r for r in records if r is not None]
    scored = [r.score for r in done if r.score is not None]
    errors = Counter(r.error_kind for r in done if r.error_kind is not None)
    return EvaluationResult(
        records=done,
        score=sum(scored) / len(scored) if scored else 0.0,
        n_scored=len(scored),
        errors=dict(errors),
    )


async def _run_one(
    program: Program,
    example: Example,
    index: int,
    metric: Metric,
    lm: LM,
    keep_traces: bool,
    rollout_id: str | int | None,
) -> ExampleRecord:
    # Each run gets its own copy of nothing: predictors are read-only during a run, and the
    # trace lives in a context variable local to this task.
    try:
        result = await program.run(example, lm=lm, rollout_id=rollout_id)
    except ParseError as exc:
        return ExampleRecord(index=index, score=0.0, error=str(exc), error_kind="parse")
    except LMError as exc:
        return ExampleRecord(index=index, error=f"{type(exc).__name__}: {exc}", error_kind="lm")
    except MiproError as exc:
        return ExampleRecord(
            index=index, error=f"{type(exc).__name__}: {exc}", error_kind="program"
        )
    except Exception as exc:  # user forward() code: recorded against the example, not hidden
        logger.debug("program raised on example %d", index, exc_info=True)
        return ExampleRecord(
            index=index, error=f"program raised {type(exc).__name__}: {exc}", error_kind="program"
        )
    trace = result.trace
    tokens_in = sum(s.prompt_tokens for s in trace)
    tokens_out = sum(s.completion_tokens for s in trace)
    latency = sum(s.latency_s for s in trace)
    try:
        value = score(metric, example, result.prediction)
    except MetricError as exc:
        return ExampleRecord(
            index=index,
            prediction=result.prediction,
            error=str(exc),
            error_kind="metric",
            prompt_tokens=tokens_in,
            completion_tokens=tokens_out,
            latency_s=latency,
        )
    return ExampleRecord(
        index=index,
        prediction=result.prediction,
        score=value,
        prompt_tokens=tokens_in,
        completion_tokens=tokens_out,
        latency_s=latency,
        trace=list(trace) if keep_traces else [],
    )


def _budget_message(failures: Counter[str], n: int, first: str) -> str:
    kinds = ", ".join(f"{k}: {v}" for k, v in sorted(failures.items()))
    return (
        f"evaluation stopped: {sum(failures.values())} of {n} examples failed ({kinds}), more "
        f"than the error budget allows; first error: {first}"
    )
