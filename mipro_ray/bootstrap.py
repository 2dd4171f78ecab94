"""Candidate few-shot demo sets per predictor, bootstrapped from teacher runs (MIPROv2 step 1).

``num_sets`` candidate sets are built; every predictor gets one demo list per set index, so the
search picks "demo set j" per predictor:

- set 0: zero-shot (no demos);
- set 1: labeled only: the first ``max_labeled_demos`` usable train examples after a shuffle
  with ``random.Random(seed)``;
- set 2: bootstrapped from the train set in its given order: up to ``max_bootstrapped_demos``
  passing teacher traces, topped up with labeled examples to ``max_labeled_demos`` demos;
- set ``i >= 3``: the same from a shuffle with ``random.Random(seed + i)``, keeping a random
  number (drawn from the same generator) in ``1..max_bootstrapped_demos`` of passing traces.

A *teacher run* is ``program.run(example, lm=teacher)``. It passes when the metric's score is
``>= metric_threshold``; the default threshold is 1.0, i.e. a ``True`` or perfect score (DSPy
accepts any truthy score; for fractional metrics such as F1 pass a threshold explicitly). One
passing run yields a demo for *every* predictor that ran in it (its inputs and outputs in that
step). A labeled demo is a train example restricted to a predictor's fields, used only when it
has the predictor's required inputs and required (non-internal) outputs, so the intermediate
steps of a pipeline get bootstrapped demos only.

Scheduling: each set needs only its first ``k`` passing examples in its own order, exactly as
a sequential pass would find them. The scheduler keeps up to ``concurrency`` runs in flight and
only ever starts a run that the sequential pass of some set is certain to need (the next
``k - passed - in_flight`` unresolved examples of each set), and memoizes every run across
sets, so no call is wasted and each (example, round) runs at most once. With
``max_rounds > 1`` an example whose run failed is retried (up to ``max_rounds`` runs) with
temperature 1.0 and a fresh rollout id before the set moves on, as in DSPy.

Errors of a teacher run (LM, parse, metric or user code) make that example unusable; they are
counted in `DemoSets.errors` and logged at debug. A teacher whose every run failed with an LM
error (checked after the first 10 runs and at the end) raises that `LMError` with a clear
message instead of yielding empty sets.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from mipro_ray.errors import ConfigError, LMError, MetricError, MiproError, ParseError
from mipro_ray.lm import LM
from mipro_ray.metrics import Metric, score
from mipro_ray.program import Predict, Program, TraceStep
from mipro_ray.signature import Example, Signature

__all__ = ["DemoSets", "bootstrap_demo_sets"]

logger = logging.getLogger(__name__)

_ABORT_AFTER_LM_ERRORS = 10
"""Stop early when this many teacher runs failed with LM errors and none got an answer."""

_RETRY_TEMPERATURE = 1.0

_Key = tuple[int, int]
"""(train example index, round) of one teacher run."""


class DemoSets(BaseModel):
    """Candidate demo sets per predictor.

    Attributes:
        sets: Predictor name -> set index -> demos (every predictor has ``num_sets`` lists).
        n_attempted: Teacher runs made.
        n_successful: Teacher runs whose metric passed.
        errors: Failed teacher runs by kind (``lm``, ``parse``, ``metric``, ``program``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    sets: dict[str, list[list[Example]]]
    n_attempted: int = Field(ge=0)
    n_successful: int = Field(ge=0)
    errors: dict[str, int] = Field(default_factory=dict)


@dataclass(frozen=True)
class _Outcome:
    """The result of one teacher run."""

    passed: bool
    trace: tuple[TraceStep, ...] = ()
    error_kind: str | None = None
    error: LMError | None = None


@dataclass(frozen=True)
class _Plan:
    """A bootstrapped set: its train order and how many passing examples it wants."""

    order: tuple[int, ...]
    k: int


async def bootstrap_demo_sets(
    program: Program,
    trainset: Sequence[Example],
    *,
    metric: Metric,
    lm: LM,
    num_sets: int,
    max_bootstrapped_demos: int,
    max_labeled_demos: int,
    seed: int,
    metric_threshold: float | None = None,
    concurrency: int = 16,
    max_rounds: int = 1,
) -> DemoSets:
    """Builds ``num_sets`` candidate demo sets for every predictor of ``program``.

    See the module docstring for what each set holds and how runs are scheduled.

    Args:
        program: The program to bootstrap (run as the teacher; it is not modified).
        trainset: Labeled train examples.
        metric: Decides which teacher runs pass.
        lm: The teacher LM.
        num_sets: Number of candidate sets per predictor (>= 1), zero-shot set included.
        max_bootstrapped_demos: Most passing traces per set (0: no teacher runs).
        max_labeled_demos: Sets are topped up with labeled examples to this many demos.
        seed: Seed of the shuffles and set sizes; the same seed gives the same sets.
        metric_threshold: A run passes when its score is >= this (default 1.0).
        concurrency: Most teacher runs in flight.
        max_rounds: Runs per example before giving up on it (>= 1).

    Returns:
        The demo sets and run counts.

    Raises:
        ConfigError: An argument is out of range.
        LMError: Every teacher run failed with an LM error (a broken teacher endpoint).
    """
    _check_args(num_sets, max_bootstrapped_demos, max_labeled_demos, concurrency, max_rounds)
    threshold = metric_threshold if metric_threshold is not None else 1.0
    predictors = program.named_predictors()
    plans = _plans(len(trainset), num_sets, max_bootstrapped_demos, seed)
    runner = _Runner(
        program=program,
        trainset=trainset,
        metric=metric,
        lm=lm,
        threshold=threshold,
        max_rounds=max_rounds,
    )
    await runner.run(plans, concurrency)

    sets: dict[str, list[list[Example]]] = {name: [] for name in predictors}
    labeled_order = list(range(len(trainset)))
    random.Random(seed).shuffle(labeled_order)
    for set_index in range(num_sets):
        if set_index == 0:
            per_predictor: dict[str, list[Example]] = {name: [] for name in predictors}
        elif set_index == 1:
            per_predictor = _top_up(
                predictors, trainset, labeled_order, {}, set(), max_labeled_demos
            )
        else:
            plan = plans[set_index]
            passed = runner.passed_examples(plan)
            boot = _bootstrapped_demos(predictors, passed, plan.k)
            used = {index for index, _ in passed}
            per_predictor = _top_up(predictors, trainset, plan.order, boot, used, max_labeled_demos)
        for name in predictors:
            sets[name].append(per_predictor[name])

    result = DemoSets(
        sets=sets,
        n_attempted=len(runner.results),
        n_successful=sum(1 for o in runner.results.values() if o.passed),
        errors=dict(runner.error_counts()),
    )
    logger.info(
        "bootstrapped %d demo sets for %d predictor(s): %d teacher runs, %d passed, errors %s",
        num_sets,
        len(predictors),
        result.n_attempted,
        result.n_successful,
        result.errors or "none",
    )
    return result


def _check_args(
    num_sets: int,
    max_bootstrapped_demos: int,
    max_labeled_demos: int,
    concurrency: int,
    max_rounds: int,
) -> None:
    for name, value, low in (
        ("num_sets", num_sets, 1),
        ("max_bootstrapped_demos", max_bootstrapped_demos, 0),
        ("max_labeled_demos", max_labeled_demos, 0),
        ("concurrency", concurrency, 1),
        ("max_rounds", max_rounds, 1),
    ):
        if value < low:
            raise ConfigError(f"bootstrap_demo_sets: {name} must be >= {low}, got {value}")


def _plans(n: int, num_sets: int, max_boot: int, seed: int) -> dict[int, _Plan]:
    """The order and wanted number of passing examples of every bootstrapped set (index >= 2)."""
    plans: dict[int, _Plan] = {}
    for set_index in range(2, num_sets):
        if set_index == 2:
            plans[2] = _Plan(order=tuple(range(n)), k=max_boot)
            continue
        rng = random.Random(seed + set_index)
        order = list(range(n))
        rng.shuffle(order)
        k = rng.randint(1, max_boot) if max_boot > 0 else 0
        plans[set_index] = _Plan(order=tuple(order), k=k)
    return plans


class _Runner:
    """Runs the teacher on exactly the (example, round) pairs the sets need, memoized."""

    def __init__(
        self,
        *,
        program: Program,
        trainset: Sequence[Example],
        metric: Metric,
        lm: LM,
        threshold: float,
        max_rounds: int,
    ) -> None:
        self.trainset = trainset
        self.metric = metric
        self.lm = lm
        self.threshold = threshold
        self.max_rounds = max_rounds
        # Retry rounds sample at a higher temperature, like DSPy; round 0 is the program as is.
        self.programs = [program] + [_hot_copy(program) for _ in range(1, max_rounds)]
        self.results: dict[_Key, _Outcome] = {}

    def _status(self, index: int) -> bool | _Key:
        """True/False once the example passed/failed all rounds, else the next key to run."""
        for round_ in range(self.max_rounds):
            outcome = self.results.get((index, round_))
            if outcome is None:
                return (index, round_)
            if outcome.passed:
                return True
        return False

    def _needed(self, plan: _Plan, in_flight: set[_Key]) -> list[_Key]:
        """Keys that the sequential pass over ``plan.order`` is certain to run next."""
        passed = 0
        unresolved: list[_Key] = []
        for index in plan.order:
            if passed + len(unresolved) >= plan.k:
                break
            status = self._status(index)
            if status is True:
                passed += 1
            elif status is not False:
                unresolved.append(status)
        return [key for key in unresolved if key not in in_flight]

    def passed_examples(self, plan: _Plan) -> list[tuple[int, tuple[TraceStep, ...]]]:
        """The first ``plan.k`` passing examples of the plan's order, with their traces."""
        found: list[tuple[int, tuple[TraceStep, ...]]] = []
        for index in plan.order:
            if len(found) >= plan.k:
                break
            for round_ in range(self.max_rounds):
                outcome = self.results.get((index, round_))
                if outcome is not None and outcome.passed:
                    found.append((index, outcome.trace))
                    break
        return found

    def error_counts(self) -> Counter[str]:
        return Counter(o.error_kind for o in self.results.values() if o.error_kind is not None)

    async def run(self, plans: dict[int, _Plan], concurrency: int) -> None:
        """Runs every needed key with at most ``concurrency`` in flight."""
        in_flight: dict[asyncio.Task[_Outcome], _Key] = {}
        try:
            while True:
                keys = set(in_flight.values())
                wanted = _interleave([self._needed(plan, keys) for plan in plans.values()])
                for key in wanted[: concurrency - len(in_flight)]:
                    in_flight[asyncio.ensure_future(self._run_one(key))] = key
                if not in_flight:
                    break
                done, _ = await asyncio.wait(set(in_flight), return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    self.results[in_flight.pop(task)] = task.result()
                self._check_teacher(final=False)
        finally:
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)
        self._check_teacher(final=True)

    def _check_teacher(self, *, final: bool) -> None:
        outcomes = list(self.results.values())
        if not outcomes or any(o.error_kind != "lm" for o in outcomes):
            return
        if not final and len(outcomes) < _ABORT_AFTER_LM_ERRORS:
            return
        first = outcomes[0].error
        assert first is not None  # an "lm" outcome always carries its error
        message = (
            f"bootstrapping failed: all {len(outcomes)} teacher runs failed with LM errors, "
            f"so no demo could be bootstrapped; first error: {first}. Check the teacher "
            f"model '{first.model}' and its endpoint"
        )
        raise type(first)(
            message,
            model=first.model,
            status=first.status,
            retry_after=first.retry_after,
            retryable=first.retryable,
        ) from first

    async def _run_one(self, key: _Key) -> _Outcome:
        index, round_ = key
        example = self.trainset[index]
        rollout = None if round_ == 0 else f"bootstrap-round-{round_}"
        try:
            result = await self.programs[round_].run(example, lm=self.lm, rollout_id=rollout)
            value = score(self.metric, example, result.prediction)
        except LMError as exc:
            logger.debug("teacher run on train example %d failed: %s", index, exc)
            return _Outcome(passed=False, error_kind="lm", error=exc)
        except (ParseError, MetricError) as exc:
            kind = "parse" if isinstance(exc, ParseError) else "metric"
            logger.debug("teacher run on train example %d failed (%s): %s", index, kind, exc)
            return _Outcome(passed=False, error_kind=kind)
        except MiproError as exc:
            logger.debug("teacher run on train example %d failed: %s", index, exc)
            return _Outcome(passed=False, error_kind="program")
        except Exception:  # user forward() code: that example is unusable, the rest go on
            logger.debug("program raised on train example %d", index, exc_info=True)
            return _Outcome(passed=False, error_kind="program")
        return _Outcome(passed=value >= self.threshold, trace=tuple(result.trace))


def _hot_copy(program: Program) -> Program:
    hot = program.copy()
    for predictor in hot.named_predictors().values():
        predictor.settings = predictor.settings.model_copy(
            update={"temperature": _RETRY_TEMPERATURE}
        )
    return hot


def _interleave(lists: list[list[_Key]]) -> list[_Key]:
    """Round-robin over the sets' needs, without duplicates, so every set progresses."""
    seen: set[_Key] = set()
    out: list[_Key] = []
    for group in itertools.zip_longest(*lists):
        for key in group:
            if key is not None and key not in seen:
                seen.add(key)
                out.append(key)
    return out


def _bootstrapped_demos(
    predictors: dict[str, Predict],
    passed: list[tuple[int, tuple[TraceStep, ...]]],
    k: int,
) -> dict[str, list[Example]]:
    demos: dict[str, list[Example]] = {name: [] for name in predictors}
    for _, trace in passed:
        for step in trace:
            if step.predictor in demos:
                demos[step.predictor].append({**step.inputs, **step.outputs})
    # A predictor called several times per run yields several demos; keep the set's size.
    return {name: found[:k] for name, found in demos.items()}


def _top_up(
    predictors: dict[str, Predict],
    trainset: Sequence[Example],
    order: Sequence[int],
    boot: dict[str, list[Example]],
    used: set[int],
    max_labeled: int,
) -> dict[str, list[Example]]:
    """Each predictor's bootstrapped demos, topped up with labeled ones taken in ``order``."""
    out: dict[str, list[Example]] = {}
    for name, predictor in predictors.items():
        demos = list(boot.get(name, []))
        for index in order:
            if len(demos) >= max_labeled:
                break
            if index in used:
                continue
            labeled = _labeled_demo(predictor.signature, trainset[index])
            if labeled is not None:
                demos.append(labeled)
        out[name] = demos
    return out


def _labeled_demo(signature: Signature, example: Example) -> Example | None:
    """The example restricted to the signature's fields, or None if it cannot be a demo.

    It can when it has a value for every required input and every required, non-internal
    output (an internal output such as a reasoning field is rarely labeled).
    """
    for field in signature.inputs:
        if not field.optional and example.get(field.name) is None:
            return None
    for field in signature.outputs:
        if not (field.optional or field.internal) and example.get(field.name) is None:
            return None
    names = (*signature.input_names, *signature.output_names)
    return {name: example[name] for name in names if example.get(name) is not None}
