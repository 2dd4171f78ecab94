"""The search phase: Ray Tune trials proposed by OptunaSearch (TPE), with full evaluations.

The search space has, per predictor, a categorical instruction index and demo-set index, and
optionally a temperature. `MiproSearcher` wraps Ray Tune's `OptunaSearch` and interleaves three
kinds of trials in one Tune run, so the pipe to the LLM stays full throughout:

- ``baseline``: the unoptimized program (candidate 0 everywhere) on the whole validation set;
  its score is added to the Optuna study as the first observation.
- ``minibatch``: a TPE suggestion scored on a seeded random minibatch of the validation set.
- ``full``: every ``full_eval_steps`` finished minibatch trials, and once at the end, the
  configuration with the best mean minibatch score that has no full score yet is scored on the
  whole validation set. Only full scores pick the returned program.

A trial whose evaluation exceeds its error budget is reported as failed with its reason and told
to Optuna as FAIL, never as a score. Records of every finished trial go to a callback as they
arrive (the optimizer persists them), and a restarted run passes its earlier records back in:
finished trials are not rerun.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Literal

import optuna
from pydantic import BaseModel, ConfigDict, Field
from ray import tune
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from mipro_ray.errors import EvaluationError
from mipro_ray.evaluate import evaluate
from mipro_ray.lm import LM, LMConfig, Usage
from mipro_ray.metrics import Metric
from mipro_ray.program import ModelSettings, Program
from mipro_ray.ray_limiter import RayLimiter
from mipro_ray.signature import Example

logger = logging.getLogger(__name__)

TrialKind = Literal["baseline", "minibatch", "full"]
Params = dict[str, int | float]

_TRIAL_CPUS = 0.25
_LEASE_MARGIN_S = 5.0


class Candidates(BaseModel):
    """What the search chooses from, per predictor."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    instructions: dict[str, list[str]]
    demo_sets: dict[str, list[list[Example]]]


class TrialRecord(BaseModel):
    """One finished trial, as stored in the run directory's ``trials.parquet``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    number: int
    kind: TrialKind
    params: Params
    score: float | None
    state: Literal["complete", "failed"]
    error: str | None = None
    n_examples: int = 0
    calls: int = 0
    cache_hits: int = 0
    http_requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    duration_s: float = 0.0
    finished_at: float = Field(default_factory=time.time)


def param_key(params: Params) -> tuple[tuple[str, float], ...]:
    """A hashable identity of a configuration."""
    return tuple(sorted((k, float(v)) for k, v in params.items()))


def baseline_params(candidates: Candidates, temperature: float | None) -> Params:
    """The unoptimized program: original instruction, demo set 0 (its own demos)."""
    params: Params = {}
    for name in candidates.instructions:
        params[f"{name}__instruction"] = 0
        params[f"{name}__demos"] = 0
        if temperature is not None:
            params[f"{name}__temperature"] = temperature
    return params


def search_space(
    candidates: Candidates, temperature_range: tuple[float, float] | None
) -> dict[str, optuna.distributions.BaseDistribution]:
    """Optuna distributions of the search variables."""
    space: dict[str, optuna.distributions.BaseDistribution] = {}
    for name, instructions in candidates.instructions.items():
        space[f"{name}__instruction"] = optuna.distributions.CategoricalDistribution(
            list(range(len(instructions)))
        )
        space[f"{name}__demos"] = optuna.distributions.CategoricalDistribution(
            list(range(len(candidates.demo_sets[name])))
        )
        if temperature_range is not None:
            space[f"{name}__temperature"] = optuna.distributions.FloatDistribution(
                temperature_range[0], temperature_range[1]
            )
    return space


def apply_params(program: Program, candidates: Candidates, params: Params) -> Program:
    """Returns a copy of ``program`` with the chosen instruction, demos and temperature."""
    candidate = program.copy()
    for name, predictor in candidate.named_predictors().items():
        predictor.instruction = candidates.instructions[name][int(params[f"{name}__instruction"])]
        predictor.demos = [
            dict(d) for d in candidates.demo_sets[name][int(params[f"{name}__demos"])]
        ]
        temperature = params.get(f"{name}__temperature")
        if temperature is not None:
            predictor.settings = ModelSettings(
                temperature=float(temperature),
                top_p=predictor.settings.top_p,
                max_tokens=predictor.settings.max_tokens,
            )
    return candidate


class TrialSpec(BaseModel):
    """Everything a trial actor needs (shipped once through the object store)."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    program: Program
    candidates: Candidates
    valset: list[Example]
    metric: Metric
    lm: LMConfig
    limiter_name: str
    minibatch_size: int
    concurrency: int
    max_error_fraction: float
    seed: int


class TrialOutcome(BaseModel):
    """What a trial reports to Tune."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    score: float
    failed: bool
    error: str | None
    n_examples: int
    calls: int
    cache_hits: int
    http_requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    duration_s: float


def minibatch_indices(n_val: int, size: int, *, seed: int, number: int) -> list[int]:
    """The validation indices a minibatch trial scores (seeded by run seed and trial number)."""
    rng = random.Random(seed * 1_000_003 + number)
    return sorted(rng.sample(range(n_val), min(size, n_val)))


def run_trial(config: dict[str, object], spec: TrialSpec) -> None:
    """Tune function trainable: evaluates one configuration and reports a `TrialOutcome`."""
    outcome = asyncio.run(_evaluate_config(config, spec))
    tune.report(outcome.model_dump())


async def _evaluate_config(config: dict[str, object], spec: TrialSpec) -> TrialOutcome:
    start = time.perf_counter()
    params = _params_of(config)
    if config["kind"] == "minibatch":
        number = config["number"]
        assert isinstance(number, int)
        indices = minibatch_indices(
            len(spec.valset), spec.minibatch_size, seed=spec.seed, number=number
        )
        examples = [spec.valset[i] for i in indices]
    else:
        examples = spec.valset
    program = apply_params(spec.program, spec.candidates, params)
    lm = LM(
        spec.lm, limiter=RayLimiter(spec.limiter_name, ttl_s=spec.lm.timeout_s + _LEASE_MARGIN_S)
    )
    score, failed, error = 0.0, False, None
    try:
        result = await evaluate(
            program,
            examples,
            metric=spec.metric,
            lm=lm,
            concurrency=min(spec.concurrency, max(len(examples), 1)),
            max_error_fraction=spec.max_error_fraction,
        )
        score = result.score
    except EvaluationError as exc:
        failed, error = True, str(exc)
    finally:
        usage = lm.usage
        await lm.aclose()
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
    )


def _params_of(config: dict[str, object]) -> Params:
    raw = config["params"]
    assert isinstance(raw, dict)
    return {str(k): v for k, v in raw.items() if isinstance(v, int | float)}


class SearchPlan(BaseModel):
    """The numbers the searcher works to."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    num_trials: int
    full_eval_steps: int
    baseline: Params
    max_calls: int | None = None
    max_tokens: int | None = None
    max_cost_usd: float | None = None
    patience: int | None = None


class SearchState:
    """Bookkeeping of one search, shared by the searcher and the stopper (driver side).

    Rebuilt from earlier records on resume; every new record goes to ``on_record``.
    """

    def __init__(
        self,
        plan: SearchPlan,
        *,
        records: Sequence[TrialRecord],
        usage_before: Usage,
        on_record: Callable[[TrialRecord], None],
        cancel: threading.Event | None = None,
    ) -> None:
        self.plan = plan
        self.records: list[TrialRecord] = list(records)
        self.usage_before = usage_before
        self.on_record = on_record
        self.cancel = cancel if cancel is not None else threading.Event()
        self.stop_reason: str | None = None
        self.hard_stop = False
        self.pending_full: deque[Params] = deque()
        self._full_scheduled = {
            param_key(r.params) for r in self.records if r.kind in ("full", "baseline")
        }
        self.final_full_done = False
        self._improved_at = 0
        self._best_minibatch = -math.inf
        for r in self.records:
            if r.kind == "minibatch" and r.state == "complete" and r.score is not None:
                self._note_minibatch(r.score)

    @property
    def next_number(self) -> int:
        """The number the next trial gets."""
        return max((r.number for r in self.records), default=-1) + 1

    def minibatch_done(self) -> int:
        """Minibatch trials finished (complete or failed)."""
        return sum(1 for r in self.records if r.kind == "minibatch")

    def baseline_done(self) -> bool:
        """Whether the baseline full evaluation finished."""
        return any(r.kind == "baseline" for r in self.records)

    def _note_minibatch(self, score: float) -> None:
        n = self.minibatch_done()
        if score > self._best_minibatch:
            self._best_minibatch = score
            self._improved_at = n

    def add(self, record: TrialRecord) -> None:
        """Records a finished trial and updates stopping and full-evaluation decisions."""
        self.records.append(record)
        if record.kind == "minibatch":
            if record.state == "complete" and record.score is not None:
                self._note_minibatch(record.score)
            if self.minibatch_done() % self.plan.full_eval_steps == 0:
                self.schedule_full_eval()
        self._check_budget()
        self.on_record(record)

    def schedule_full_eval(self) -> bool:
        """Queues the best not-yet-fully-evaluated configuration; False if there is none."""
        done = self._full_scheduled
        scores: dict[tuple[tuple[str, float], ...], list[float]] = {}
        params_of: dict[tuple[tuple[str, float], ...], Params] = {}
        for r in self.records:
            if r.kind == "minibatch" and r.state == "complete" and r.score is not None:
                key = param_key(r.params)
                if key not in done:
                    scores.setdefault(key, []).append(r.score)
                    params_of[key] = r.params
        if not scores:
            return False
        best = max(scores, key=lambda k: sum(scores[k]) / len(scores[k]))
        self._full_scheduled.add(best)
        self.pending_full.append(params_of[best])
        return True

    def usage_total(self) -> tuple[int, int, float]:
        """(LLM calls without cache hits, tokens, cost) of the run so far."""
        calls = self.usage_before.calls - self.usage_before.cache_hits
        tokens = self.usage_before.total_tokens
        cost = self.usage_before.cost_usd
        for r in self.records:
            calls += r.calls - r.cache_hits
            tokens += r.prompt_tokens + r.completion_tokens
            cost += r.cost_usd
        return calls, tokens, cost

    def _check_budget(self) -> None:
        plan = self.plan
        calls, tokens, cost = self.usage_total()
        if plan.max_calls is not None and calls >= plan.max_calls:
            self._stop(f"budget: {calls} LLM calls reached max_calls={plan.max_calls}", hard=True)
        elif plan.max_tokens is not None and tokens >= plan.max_tokens:
            self._stop(f"budget: {tokens} tokens reached max_tokens={plan.max_tokens}", hard=True)
        elif plan.max_cost_usd is not None and cost >= plan.max_cost_usd:
            self._stop(f"budget: ${cost:.4f} reached max_cost_usd={plan.max_cost_usd}", hard=True)
        elif (
            plan.patience is not None and self.minibatch_done() - self._improved_at >= plan.patience
        ):
            self._stop(f"no improvement in {plan.patience} trials (patience)", hard=False)

    def _stop(self, reason: str, *, hard: bool) -> None:
        if self.stop_reason is None:
            logger.info("stopping the search: %s", reason)
            self.stop_reason = reason
        self.hard_stop = self.hard_stop or hard


class MiproSearcher(Searcher):
    """A Tune `Searcher` that asks `OptunaSearch` for minibatch trials and adds full evaluations."""

    def __init__(self, *, inner: OptunaSearch, state: SearchState) -> None:
        """Args: inner: the TPE searcher (metric ``score``, mode ``max``); state: bookkeeping."""
        super().__init__(metric="score", mode="max")
        self._inner = inner
        self._state = state
        self._live: dict[str, dict[str, object]] = {}
        self._asked_minibatch = state.minibatch_done()
        self._next_number = state.next_number
        self._space_keys = set(inner._space) if isinstance(inner._space, dict) else set()

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict[str, object], **spec: object
    ) -> bool:
        """The space is fixed at construction; Tune's param_space is empty."""
        return True

    def suggest(self, trial_id: str) -> dict[str, object] | None:
        """Returns the next trial's config, None to wait, or FINISHED."""
        state = self._state
        if state.cancel.is_set():
            state._stop("cancelled", hard=True)
        if state.hard_stop:
            return Searcher.FINISHED  # type: ignore[return-value]
        config = self._next(trial_id)
        if config is None:
            return None if self._live else Searcher.FINISHED  # type: ignore[return-value]
        if isinstance(config, str):  # "wait": ask again when a trial finishes
            return None
        config["number"] = self._next_number
        self._next_number += 1
        self._live[trial_id] = config
        return config

    def _next(self, trial_id: str) -> dict[str, object] | str | None:
        state = self._state
        if not state.baseline_done() and not any(
            c["kind"] == "baseline" for c in self._live.values()
        ):
            return {"kind": "baseline", "params": dict(state.plan.baseline)}
        if state.pending_full:
            return {"kind": "full", "params": state.pending_full.popleft()}
        if state.stop_reason is None and self._asked_minibatch < state.plan.num_trials:
            suggested = self._inner.suggest(trial_id)
            if not isinstance(suggested, dict):
                return "wait"
            self._asked_minibatch += 1
            return {"kind": "minibatch", "params": dict(suggested)}
        if self._live:
            return "wait"
        if not state.final_full_done:
            state.final_full_done = True
            if state.schedule_full_eval():
                return {"kind": "full", "params": state.pending_full.popleft()}
        if state.stop_reason is None:
            state.stop_reason = f"completed {state.plan.num_trials} trials"
        return None

    def on_trial_complete(
        self, trial_id: str, result: dict[str, object] | None = None, error: bool = False
    ) -> None:
        """Records the trial and tells Optuna (FAIL for failed trials)."""
        config = self._live.pop(trial_id, None)
        if config is None:
            return
        kind = config["kind"]
        assert kind in ("baseline", "minibatch", "full")
        params = _params_of(config)
        failed = error or result is None or bool(result.get("failed"))
        reason: str | None = None
        if failed:
            reason = (
                str(result.get("error"))
                if result is not None and result.get("error")
                else "the trial actor crashed (after Tune's retries); see the Tune logs"
            )
        if kind == "minibatch":
            self._inner.on_trial_complete(trial_id, None if failed else result, error=failed)
        elif (
            kind == "baseline"
            and not failed
            and result is not None
            and set(params) == self._space_keys
        ):
            self._inner.add_evaluated_point(params, _float(result["score"]))
        number = config["number"]
        assert isinstance(number, int)
        self._state.add(_record(number, kind, params, result, failed, reason))

    def __getstate__(self) -> dict[str, object]:
        # Tune pickles its config for Tuner.restore. We resume from the run directory's
        # records instead, so the live bookkeeping (events, callbacks) is not pickled.
        return {"_metric": self._metric, "_mode": self._mode}

    def save(self, checkpoint_path: str) -> None:
        """Resume works from the run directory's records, not Tune checkpoints."""

    def restore(self, checkpoint_path: str) -> None:
        """See `save`."""


def _float(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def _int(value: object) -> int:
    return int(value) if isinstance(value, int | float) else 0


def _record(
    number: int,
    kind: TrialKind,
    params: Params,
    result: dict[str, object] | None,
    failed: bool,
    reason: str | None,
) -> TrialRecord:
    r = result if result is not None else {}
    return TrialRecord(
        number=number,
        kind=kind,
        params=params,
        score=None if failed else _float(r.get("score")),
        state="failed" if failed else "complete",
        error=reason,
        n_examples=_int(r.get("n_examples")),
        calls=_int(r.get("calls")),
        cache_hits=_int(r.get("cache_hits")),
        http_requests=_int(r.get("http_requests")),
        prompt_tokens=_int(r.get("prompt_tokens")),
        completion_tokens=_int(r.get("completion_tokens")),
        cost_usd=_float(r.get("cost_usd")),
        duration_s=_float(r.get("duration_s")),
    )


class _StopAll(tune.Stopper):
    """Stops running trials at once when a hard budget is hit or the run is cancelled."""

    def __getstate__(self) -> dict[str, object]:
        return {}  # see MiproSearcher.__getstate__

    def __init__(self, state: SearchState) -> None:
        self._state = state

    def __call__(self, trial_id: str, result: dict[str, object]) -> bool:
        return False

    def stop_all(self) -> bool:
        if self._state.cancel.is_set():
            self._state._stop("cancelled", hard=True)
        return self._state.hard_stop


def mark_abandoned_trials_failed(storage: optuna.storages.BaseStorage, study_name: str) -> int:
    """Marks RUNNING trials left by a killed run as FAIL; returns how many."""
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return 0
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for t in running:
        storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
    return len(running)


def run_search(
    spec: TrialSpec,
    state: SearchState,
    *,
    storage: optuna.storages.BaseStorage,
    study_name: str,
    temperature_range: tuple[float, float] | None,
    max_concurrent_trials: int,
    tune_dir: str,
) -> None:
    """Runs the Tune search until the plan, a budget or a cancellation ends it."""
    abandoned = mark_abandoned_trials_failed(storage, study_name)
    if abandoned:
        logger.info("marked %d trial(s) of an interrupted run as failed", abandoned)
    sampler = optuna.samplers.TPESampler(seed=spec.seed, multivariate=True, constant_liar=True)
    inner = OptunaSearch(
        space=search_space(spec.candidates, temperature_range),
        metric="score",
        mode="max",
        sampler=sampler,
        study_name=study_name,
        storage=storage,
    )
    searcher = MiproSearcher(inner=inner, state=state)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, spec=spec), {"cpu": _TRIAL_CPUS}
    )
    plan = state.plan
    max_samples = 2 * plan.num_trials + plan.num_trials // plan.full_eval_steps + 4
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            num_samples=max_samples,
            max_concurrent_trials=max_concurrent_trials,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=study_name,
            storage_path=tune_dir,
            stop=_StopAll(state),
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=1),
            log_to_file=True,
        ),
    )
    tuner.fit()
