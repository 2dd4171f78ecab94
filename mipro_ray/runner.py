"""Run a `RunSpec` end to end: build, load, optimize, score the held-out split.

Shared by the CLI (``mipro-ray optimize``), ``experiments/run_mipro.py`` (``ray job submit``)
and the Serve app's HTTP jobs, so all three behave the same.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict

from mipro_ray.evaluate import evaluate
from mipro_ray.lm import LM, LMConfig
from mipro_ray.metrics import Metric
from mipro_ray.optimizer import MIPRO, MiproResult, RunEvent
from mipro_ray.program import Program
from mipro_ray.ray_limiter import RayLimiter
from mipro_ray.signature import Example
from mipro_ray.spec import RunSpec

logger = logging.getLogger(__name__)


class SpecResult(BaseModel):
    """A finished run with its held-out scores (None without a test split)."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    result: MiproResult
    baseline_test_score: float | None
    optimized_test_score: float | None
    n_test: int


def run_spec(
    spec: RunSpec,
    *,
    on_event: Callable[[RunEvent], None] | None = None,
    cancel: threading.Event | None = None,
    allow_custom: bool = True,
    ray_address: str | None = None,
) -> SpecResult:
    """Optimizes the spec's program and scores baseline and optimized programs on ``test``.

    Args:
        spec: The job.
        on_event: Progress callback (see `MIPRO`).
        cancel: Set to stop the run.
        allow_custom: Allow user code (``class_path`` programs, ``module:function`` metrics).
        ray_address: Ray cluster to join when Ray is not initialized.

    Raises:
        ConfigError, DatasetError, StorageError, LMError: as the steps they come from.
    """
    program = spec.program.build(allow_custom=allow_custom)
    metric = spec.build_metric(allow_custom=allow_custom)
    splits = spec.load_data(program)
    mipro = MIPRO(
        student=spec.student,
        teacher=spec.teacher,
        proposer=spec.proposer,
        metric=metric,
        settings=spec.optimizer,
        run_dir=spec.run_dir,
        storage_url=spec.storage_url,
        ray_address=ray_address,
        on_event=on_event,
        cancel=cancel,
    )
    result = mipro.compile(program, trainset=splits.train, valset=splits.val)
    baseline_test = optimized_test = None
    if splits.test and result.stop_reason != "cancelled":
        baseline_test, optimized_test = asyncio.run(
            _test_scores(program, result.program, splits.test, metric, spec.student)
        )
    return SpecResult(
        result=result,
        baseline_test_score=baseline_test,
        optimized_test_score=optimized_test,
        n_test=len(splits.test),
    )


async def _test_scores(
    baseline: Program, optimized: Program, test: list[Example], metric: Metric, config: LMConfig
) -> tuple[float, float]:
    limiter = RayLimiter.for_config(config)
    lm = LM(config, limiter=limiter)
    try:
        before, after = await asyncio.gather(
            evaluate(baseline, test, metric=metric, lm=lm, concurrency=config.max_concurrency),
            evaluate(optimized, test, metric=metric, lm=lm, concurrency=config.max_concurrency),
        )
    finally:
        await lm.aclose()
        await limiter.aclose()
    return before.score, after.score
