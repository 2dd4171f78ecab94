"""The search phase: Ray Tune trials proposed by OptunaSearch (TPE), with full evaluations.

The search space has, per predictor, a categorical instruction index and demo-set index, and
optionally a temperature. `MiproSearcher` wraps Ray Tune's `OptunaSearch` and interleaves three
kinds of trials in one Tune run, so the pipe to the LLM stays full throughout:

- ``baseline``: the unoptimized program (candidate 0 everywhere) on the whole validation set;
  its score is added to the Optuna study as the first observation.
- ``minibatch``: a TPE suggestion scored on a seeded random minibatch of the validation set.
- ``full``: every ``full_eval_steps`` finished minibatch trials, and at the end if minibatch
  trials finished since the last one, the configuration with the best mean minibatch score
  that has no full score yet is scored on the whole validation set. Only full scores pick the
  returned program.

The search starts *before* the candidates exist: the baseline needs none. The driver's
lanes (`SearchRun.lanes`, one per trial actor, on the driver's event loop) take trials first:
the baseline, while the optimizer still bootstraps demos and proposes instructions on the same
loop (and, for a run that starts its own cluster, before Ray is even up), then minibatch and
full trials once `SearchRun.provide` hands over the candidates. The Tune run (`SearchRun.start`)
starts the trial actors meanwhile, each with a *warm-up* trial: no configuration, no LLM call,
it only checks in with the driver until the searcher releases it (seconds of process start-up
on a small machine, 10 s measured under load: a real trial handed to a starting actor would
wait that long while the rest of the search waited for it). Releasing a warm-up retires one
lane; Tune then reuses the started actor for a real trial, and the actors take over.

A trial whose evaluation exceeds its error budget is reported as failed with its reason and told
to Optuna as FAIL, never as a score. Records of every finished trial go to a callback as they
arrive (the optimizer persists them), and a restarted run passes its earlier records back in:
finished trials are not rerun.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import optuna
from pydantic import BaseModel, ConfigDict, Field
from ray import tune
from ray.air.constants import EXPR_RESULT_FILE
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from mipro_ray import telemetry
from mipro_ray._background import Background
from mipro_ray.limiter import Limiter
from mipro_ray.lm import Usage
from mipro_ray.program import Program
from mipro_ray.signature import Example
from mipro_ray.trial import (
    WARMUP,
    PredictorChoice,
    TrialOutcome,
    TrialSpec,
    apply_choices,
    evaluate_config,
    minibatch_indices,
    run_trial,
)

__all__ = [
    "Candidates",
    "MiproSearcher",
    "SearchPlan",
    "SearchRun",
    "SearchState",
    "TrialOutcome",
    "TrialRecord",
    "TrialSpec",
    "apply_params",
    "baseline_choices",
    "baseline_params",
    "choices_for",
    "covering_start",
    "minibatch_indices",
    "param_key",
    "search_space",
]

logger = logging.getLogger(__name__)

TrialKind = Literal["baseline", "minibatch", "full"]
_WAIT = "wait"
Params = dict[str, int | float]

_TRIAL_CPUS = 0.25
_MAX_LANES = 8
"""Most trials the driver scores at once while the trial actors start."""


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


def baseline_params(
    predictors: Candidates | Iterable[str], temperature: float | None = None
) -> Params:
    """The unoptimized program: original instruction, demo set 0 (zero-shot), per predictor."""
    names = predictors.instructions if isinstance(predictors, Candidates) else predictors
    params: Params = {}
    for name in names:
        params[f"{name}__instruction"] = 0
        params[f"{name}__demos"] = 0
        if temperature is not None:
            params[f"{name}__temperature"] = temperature
    return params


def baseline_choices(program: Program) -> dict[str, PredictorChoice]:
    """What `baseline_params` selects, without the candidates: each predictor's own
    instruction (candidate 0 is always the original) and no demos (demo set 0 is zero-shot)."""
    return {
        name: PredictorChoice(instruction=p.instruction, demos=[])
        for name, p in program.named_predictors().items()
    }


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


def covering_start(
    space: dict[str, optuna.distributions.BaseDistribution],
    *,
    baseline: Params,
    max_points: int,
    seed: int,
) -> list[Params]:
    """The first configurations to try: every candidate of every categorical variable once.

    Point ``i`` takes, for each categorical variable, the ``i``-th entry of a seeded permutation
    of its choices (repeated with fresh permutations for variables with fewer choices), and for
    each float variable a seeded stratified value. With 6 instructions and 6 demo sets the first
    6 trials try each instruction and each demo set once; TPE's own random start-up would miss a
    given instruction in its first 10 trials about one time in six ((5/6)^10).
    The baseline configuration (already scored on the whole validation set) is never repeated.

    Args:
        space: The search space (`search_space`).
        baseline: The baseline's parameters (excluded).
        max_points: At most this many points.
        seed: Seeds the permutations.
    """
    sizes = [
        len(d.choices)
        for d in space.values()
        if isinstance(d, optuna.distributions.CategoricalDistribution)
    ]
    n = min(max(sizes, default=0), max_points)
    if n <= 0:
        return []
    rng = random.Random(seed)
    for _ in range(100):
        columns: dict[str, list[int | float]] = {}
        for name, dist in space.items():
            if isinstance(dist, optuna.distributions.CategoricalDistribution):
                column: list[int | float] = []
                choices = [c for c in dist.choices if isinstance(c, int | float)]
                while len(column) < n:
                    column.extend(rng.sample(choices, len(choices)))
                columns[name] = column[:n]
            elif isinstance(dist, optuna.distributions.FloatDistribution):
                strata = rng.sample(range(n), n)
                width = (dist.high - dist.low) / n
                columns[name] = [dist.low + (s + rng.random()) * width for s in strata]
        points = [{name: column[i] for name, column in columns.items()} for i in range(n)]
        if all(param_key(p) != param_key(baseline) for p in points):
            return points
    return [p for p in points if param_key(p) != param_key(baseline)]


def choices_for(candidates: Candidates, params: Params) -> dict[str, PredictorChoice]:
    """The instruction, demos and temperature that ``params`` select, per predictor."""
    choices: dict[str, PredictorChoice] = {}
    for name, instructions in candidates.instructions.items():
        temperature = params.get(f"{name}__temperature")
        choices[name] = PredictorChoice(
            instruction=instructions[int(params[f"{name}__instruction"])],
            demos=[dict(d) for d in candidates.demo_sets[name][int(params[f"{name}__demos"])]],
            temperature=None if temperature is None else float(temperature),
        )
    return choices


def apply_params(program: Program, candidates: Candidates, params: Params) -> Program:
    """Returns a copy of ``program`` with the chosen instruction, demos and temperature."""
    return apply_choices(program, choices_for(candidates, params))


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

    def must_stop(self) -> bool:
        """Whether running trials must stop now: a hard stop, or a cancel (made one here)."""
        if self.cancel.is_set():
            self._stop("cancelled", hard=True)
        return self.hard_stop

    def abort(self, reason: str) -> None:
        """Stops the search at once (running trials too), e.g. when the optimizer failed."""
        self._stop(reason, hard=True)

    def _stop(self, reason: str, *, hard: bool) -> None:
        if self.stop_reason is None:
            logger.info("stopping the search: %s", reason)
            self.stop_reason = reason
        self.hard_stop = self.hard_stop or hard


class MiproSearcher(Searcher):
    """A Tune `Searcher` that asks `OptunaSearch` for minibatch trials and adds full evaluations.

    It starts without candidates: until `provide` is called it hands out only the baseline
    (whose configuration is known up front) and then waits. Until the trial actors have
    started, the driver's lanes (`SearchRun.lanes`) `claim` trials and score them in the
    driver; the first lane takes the baseline. Tune's first ``actors`` trials are warm-ups,
    one per trial actor, all asked at once when the Tune run starts, so every actor starts at
    the same time. A warm-up checks in until `release_warmup` ends it; then Tune reuses its
    actor (cached, as it has started) for a real trial. Warm-ups are released once all of
    them checked in, one at a time, each once the previous released actor has started its
    real trial: Tune keeps a started actor cached only while a trial waits for it (or when
    none is cached), and kills others.
    `provide` and the lanes call from other threads than Tune's, hence the lock.
    """

    def __init__(
        self,
        *,
        state: SearchState,
        baseline: dict[str, PredictorChoice],
        model: str = "",
        actors: int = 1,
    ) -> None:
        """Args: state: bookkeeping; baseline: the unoptimized program's configuration;
        model: the student's model name, the label of the trials' LM calls in telemetry;
        actors: the trial actors Tune runs (each gets a warm-up first)."""
        super().__init__(metric="score", mode="max")
        self._state = state
        self._model = model
        self._baseline = {k: v.model_dump(mode="json") for k, v in baseline.items()}
        self._baseline_issued = False
        self._lock = threading.Lock()
        self._inner: OptunaSearch | None = None
        self._candidates: Candidates | None = None
        self._space_keys: set[str] = set()
        self._baseline_score: float | None = None
        self._live: dict[str, dict[str, object]] = {}
        self._changed = threading.Condition(self._lock)
        self._actors = actors
        self._warmups: set[str] = set()  # live warm-up trials (Tune trial ids)
        self._checked_in: set[str] = set()  # warm-ups that reported (their actors run)
        self._warmups_issued = 0
        self._released = 0  # warm-ups released: lanes retired
        self._tune_starts = 0  # real trials Tune's actors started
        self._finished = False  # FINISHED was handed out: nothing more to run
        self._asked_minibatch = state.minibatch_done()
        self._next_number = state.next_number

    def claim(
        self, trial_id: str, *, retire_after: int = 1, wait_s: float = 0.5
    ) -> dict[str, object] | str:
        """A trial for a lane of the driver to score itself, until the actors take over.

        Returns its config (`on_trial_complete` or `drop` it with ``trial_id``), ``"wait"``
        after waiting up to ``wait_s`` for a finished trial or the candidates (ask again), or
        ``Searcher.FINISHED``: the search is over, or ``retire_after`` warm-ups have been
        released (lane ``i`` of ``n`` passes ``n - i``: each trial actor that takes over
        retires one lane, so the pipe stays full while the other actors still start).
        """
        with self._changed:
            if self._released >= retire_after:
                return Searcher.FINISHED
            config = self._take(trial_id)
            if config == _WAIT:
                self._changed.wait(wait_s)
            return config

    def note_tune_trial_started(self) -> None:
        """A real (not warm-up) Tune trial started on a trial actor: the next warm-up may be
        released."""
        with self._changed:
            self._tune_starts += 1

    def release_warmup(self, trial_id: str) -> bool:
        """Whether a checked-in trial should end now (Tune's stopper asks at each result).

        True for a warm-up once its actor is needed: the candidates exist, every live warm-up
        has checked in (its actor runs: Tune gives a cached actor to the first pending trial,
        and would hand it to a warm-up still starting, killing that one's actor), and every
        warm-up released before has started its real trial (so Tune keeps this actor cached
        for the next one, see the class). Releasing retires one lane of the driver. Also True
        for a warm-up once the search is over. False for real trials (they end on their own).
        A warm-up that cannot start (the cluster lacks the resources) holds the releases back:
        the driver's lanes then run the search.
        """
        with self._changed:
            if trial_id not in self._warmups:
                return False
            self._checked_in.add(trial_id)
            if self._finished or self._state.must_stop():
                return True
            if (
                self._inner is None
                or self._released > self._tune_starts
                or self._warmups_issued < self._actors
                or not self._warmups <= self._checked_in
            ):
                return False
            self._released += 1
            self._changed.notify_all()
            return True

    def must_end_run(self) -> bool:
        """Whether the Tune run must end now: a hard stop, or the search is over with only
        warm-ups left (they may still be starting: no need to wait for them)."""
        with self._lock:
            return self._state.must_stop() or (self._finished and not self._live)

    def drop(self, trial_id: str, outcome: TrialOutcome) -> None:
        """Ends a claimed trial that was stopped (cancel, hard stop) without a record, as Tune
        ends its actors' stopped trials: a resumed run runs it again. Optuna is told FAIL."""
        with self._changed:
            config = self._live.pop(trial_id, None)
            if config is None:
                return
            self._record_telemetry(str(config["kind"]), outcome.model_dump(), failed=True)
            if config["kind"] == "minibatch" and self._inner is not None:
                self._inner.on_trial_complete(trial_id, None, error=True)
            self._changed.notify_all()

    def provide(self, candidates: Candidates, inner: OptunaSearch) -> None:
        """Hands over the candidates and the TPE searcher: minibatch trials may begin."""
        with self._lock:
            self._candidates = candidates
            self._inner = inner
            self._space_keys = set(inner._space) if isinstance(inner._space, dict) else set()
            if self._baseline_score is not None:
                self._add_baseline_point(self._baseline_score)
            self._changed.notify_all()

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict[str, object], **spec: object
    ) -> bool:
        """The space is fixed at construction; Tune's param_space is empty."""
        return True

    def suggest(self, trial_id: str) -> dict[str, object] | None:
        """Returns the next trial's config (a warm-up for each of the first ``actors`` asks),
        None to wait, or FINISHED."""
        with self._lock:
            if (
                self._warmups_issued < self._actors
                and not self._finished
                and not self._state.must_stop()
            ):
                self._warmups_issued += 1
                self._warmups.add(trial_id)
                return {"kind": WARMUP}
            config = self._take(trial_id)
        return None if config == _WAIT else config  # type: ignore[return-value]

    def _take(self, trial_id: str) -> dict[str, object] | str:
        """The next trial's config (numbered and live), `_WAIT`, or FINISHED; with the lock
        held."""
        if self._state.must_stop():
            self._finished = True
            return Searcher.FINISHED
        config = self._next(trial_id)
        if config is None:
            if self._live:
                return _WAIT
            self._finished = True
            return Searcher.FINISHED
        if isinstance(config, str):  # ask again when a trial finishes
            return _WAIT
        config["number"] = self._next_number
        self._next_number += 1
        telemetry.trial_started(str(config["kind"]))
        self._live[trial_id] = config
        return config

    def _config(self, kind: TrialKind, params: Params) -> dict[str, object]:
        if kind == "baseline":
            program: dict[str, object] = dict(self._baseline)
        else:
            assert self._candidates is not None
            choices = choices_for(self._candidates, params)
            program = {k: v.model_dump(mode="json") for k, v in choices.items()}
        return {"kind": kind, "params": dict(params), "program": program}

    def _next(self, trial_id: str) -> dict[str, object] | str | None:
        state = self._state
        if not state.baseline_done() and not self._baseline_issued:
            self._baseline_issued = True
            return self._config("baseline", state.plan.baseline)
        if self._inner is None:
            return _WAIT  # the candidates are still being prepared
        if state.pending_full:
            return self._config("full", state.pending_full.popleft())
        if state.stop_reason is None and self._asked_minibatch < state.plan.num_trials:
            suggested = self._inner.suggest(trial_id)
            if not isinstance(suggested, dict):
                return _WAIT
            self._asked_minibatch += 1
            return self._config("minibatch", {str(k): v for k, v in suggested.items()})
        if any(c["kind"] != "full" for c in self._live.values()):
            return _WAIT
        if not state.final_full_done:
            # The final full evaluation (beside any running one) covers the minibatch trials
            # that finished after the last every-`full_eval_steps` one, if there are such.
            state.final_full_done = True
            if state.minibatch_done() % state.plan.full_eval_steps and state.schedule_full_eval():
                return self._config("full", state.pending_full.popleft())
        if self._live:
            return _WAIT
        if state.stop_reason is None:
            state.stop_reason = f"completed {state.plan.num_trials} trials"
        return None

    def on_trial_complete(
        self, trial_id: str, result: dict[str, object] | None = None, error: bool = False
    ) -> None:
        """Records the trial (and its telemetry) and tells Optuna (FAIL for failed trials).
        A warm-up leaves nothing."""
        with self._lock:
            self._warmups.discard(trial_id)
            self._checked_in.discard(trial_id)
            config = self._live.pop(trial_id, None)
            if config is None:
                return
            kind = config["kind"]
            assert kind in ("baseline", "minibatch", "full")
            number = config["number"]
            assert isinstance(number, int)
            params = _params_of(config)
            failed = error or result is None or bool(result.get("failed"))
            self._record_telemetry(kind, result, failed)
            reason: str | None = None
            if failed:
                reason = (
                    str(result.get("error"))
                    if result is not None and result.get("error")
                    else "the trial actor crashed (after Tune's retries); see the Tune logs"
                )
            if kind == "minibatch" and self._inner is not None:
                self._inner.on_trial_complete(trial_id, None if failed else result, error=failed)
            elif kind == "baseline" and not failed and result is not None:
                self._baseline_score = _float(result["score"])
                if self._inner is not None:
                    self._add_baseline_point(self._baseline_score)
            self._state.add(_record(number, kind, params, result, failed, reason))
            self._changed.notify_all()

    def _record_telemetry(self, kind: str, result: dict[str, object] | None, failed: bool) -> None:
        """Records a finished trial and its LM calls here, in the driver (see `TrialOutcome`)."""
        telemetry.trial_ended(kind, failed=failed)
        if result is None:
            return  # a crashed actor's calls are lost with it
        latencies, error_kinds = result.get("latencies_s"), result.get("error_kinds")
        telemetry.record_lm_calls(
            self._model,
            calls=_int(result.get("calls")),
            cache_hits=_int(result.get("cache_hits")),
            prompt_tokens=_int(result.get("prompt_tokens")),
            completion_tokens=_int(result.get("completion_tokens")),
            latencies_s=[_float(x) for x in latencies] if isinstance(latencies, list) else [],
            error_kinds=[str(x) for x in error_kinds] if isinstance(error_kinds, list) else [],
        )

    def _add_baseline_point(self, score: float) -> None:
        assert self._inner is not None
        if set(self._state.plan.baseline) == self._space_keys:
            self._inner.add_evaluated_point(dict(self._state.plan.baseline), score)

    def __getstate__(self) -> dict[str, object]:
        # Tune pickles its config for Tuner.restore. We resume from the run directory's
        # records instead, so the live bookkeeping (events, callbacks, locks) is not pickled.
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


class _Stopper(tune.Stopper):
    """Ends warm-ups when the searcher releases them, and the whole run at once when a hard
    budget is hit, the run is cancelled, or the search is over with only warm-ups left."""

    def __getstate__(self) -> dict[str, object]:
        return {}  # see MiproSearcher.__getstate__

    def __init__(self, searcher: MiproSearcher) -> None:
        self._searcher = searcher

    def __call__(self, trial_id: str, result: dict[str, object]) -> bool:
        return self._searcher.release_warmup(trial_id)

    def stop_all(self) -> bool:
        return self._searcher.must_end_run()


class _TrialStarted(tune.Callback):
    """Tells the searcher when a real Tune trial starts on an actor (the next warm-up may be
    released)."""

    def __init__(self, searcher: MiproSearcher) -> None:
        self._searcher: MiproSearcher | None = searcher

    def __getstate__(self) -> dict[str, object]:
        return {"_searcher": None}  # see MiproSearcher.__getstate__

    def on_trial_start(self, iteration: int, trials: object, trial: object, **info: object) -> None:
        config = getattr(trial, "config", {})
        if self._searcher is not None and config.get("kind") != WARMUP:
            self._searcher.note_tune_trial_started()


class _QuietWarmups(logging.Filter):
    """Drops Tune's end-of-run warning that it cannot read some trials' metrics back, when
    all of them are warm-ups (they have none to read): nothing is missing."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith("Failed to fetch metrics"):
            return True
        trials = [line for line in message.splitlines()[1:] if line.strip()]
        return not trials or not all(f"kind={WARMUP}" in line for line in trials)


logging.getLogger("ray.tune.analysis.experiment_analysis").addFilter(_QuietWarmups())


class _NoCSV(CSVLoggerCallback):
    """Stands in for Tune's default CSV logger, so Tune does not add it: the run directory's
    records replace Tune's per-trial logs, which cost driver CPU at every result."""

    def log_trial_start(self, trial: object) -> None:
        """No per-trial files."""

    def log_trial_result(self, iteration: int, trial: object, result: dict[str, object]) -> None:
        """No per-trial files."""

    def log_trial_end(self, trial: object, failed: bool = False) -> None:
        """No per-trial files."""


class _NoJSON(JsonLoggerCallback):
    """See `_NoCSV`."""

    def log_trial_start(self, trial: object) -> None:
        """No per-trial files."""

    def log_trial_result(self, iteration: int, trial: object, result: dict[str, object]) -> None:
        """No per-trial files."""

    def log_trial_end(self, trial: object, failed: bool = False) -> None:
        """An empty ``result.json``: the result grid `Tuner.fit` builds then reads no metrics
        (the records have them) instead of warning that each trial's file is missing."""
        storage = getattr(trial, "storage", None)
        if storage is None:
            return
        fs, trial_dir = storage.storage_filesystem, storage.trial_fs_path
        fs.create_dir(trial_dir, recursive=True)
        with fs.open_output_stream(f"{trial_dir}/{EXPR_RESULT_FILE}"):
            pass


class _NoTBX(TBXLoggerCallback):
    """See `_NoCSV` (also spares a TensorBoard writer thread per trial)."""

    def __init__(self) -> None:
        # Tune's __init__ imports tensorboardX; none is written here.
        self._trial_writer = {}
        self._trial_result = {}

    def log_trial_start(self, trial: object) -> None:
        """No per-trial files."""

    def log_trial_result(self, iteration: int, trial: object, result: dict[str, object]) -> None:
        """No per-trial files."""

    def log_trial_end(self, trial: object, failed: bool = False) -> None:
        """No per-trial files."""


def mark_abandoned_trials_failed(storage: optuna.storages.BaseStorage, study_name: str) -> int:
    """Marks trials left by a killed run as FAIL; returns how many.

    Those are RUNNING trials (asked, never told) and WAITING ones (enqueued start points never
    asked: `SearchRun.provide` enqueues the start points that have no record again).
    """
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return 0
    running = study.get_trials(
        deepcopy=False,
        states=(optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING),
    )
    for t in running:
        storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
    return len(running)


class SearchRun:
    """One search: the driver's lanes and a Tune run, both started before the candidates exist.

    Usage: run `lanes` on the driver's event loop (no Ray needed until the hand-over of the
    limiter: the baseline is scored at once), `start` the Tune run once Ray is up (its trial
    actors start), `provide` the candidates (minibatch trials begin, in the lanes until the
    trial actors run), `join` (waits for the Tune run, re-raises what it raised).
    `abort` stops it early.
    """

    def __init__(
        self,
        spec: TrialSpec,
        state: SearchState,
        *,
        study_name: str,
        temperature_range: tuple[float, float] | None,
        max_concurrent_trials: int,
        tune_dir: str,
    ) -> None:
        """Args:
        spec: What every trial needs.
        state: Bookkeeping (earlier records on resume).
        study_name: The Optuna study (one per run directory), also the Tune run's name.
        temperature_range: Also search temperatures in this range.
        max_concurrent_trials: Trial actors running at once (and the driver's lanes, at
            most `_MAX_LANES`).
        tune_dir: Where Tune keeps its experiment files.
        """
        self._spec = spec
        self._state = state
        self._study_name = study_name
        self._temperature_range = temperature_range
        self._max_concurrent_trials = max_concurrent_trials
        self._tune_dir = tune_dir
        self._searcher = MiproSearcher(
            state=state,
            baseline=baseline_choices(spec.program),
            model=spec.lm.model,
            actors=max_concurrent_trials,
        )
        self._run: Background[None] | None = None

    @property
    def state(self) -> SearchState:
        """The search's bookkeeping."""
        return self._state

    def start(self) -> None:
        """Starts the Tune run in a daemon thread (Ray must be initialized)."""
        self._run = Background(self._fit, name="mipro-search")

    def provide(
        self,
        candidates: Candidates,
        *,
        usage_before: Usage,
        storage: optuna.storages.BaseStorage,
    ) -> None:
        """Hands over the candidates (and the usage of the phases that made them) and the
        Optuna study's storage (only TPE needs it: it may be opened meanwhile)."""
        abandoned = mark_abandoned_trials_failed(storage, self._study_name)
        if abandoned:
            logger.info("marked %d trial(s) of an interrupted run as failed", abandoned)
        sampler = optuna.samplers.TPESampler(
            seed=self._spec.seed, multivariate=True, constant_liar=True
        )
        space = search_space(candidates, self._temperature_range)
        plan = self._state.plan
        done = {param_key(r.params) for r in self._state.records if r.kind == "minibatch"}
        start = [
            point
            for point in covering_start(
                space,
                baseline=plan.baseline,
                max_points=max(1, plan.num_trials // 2),
                seed=self._spec.seed,
            )
            if param_key(point) not in done
        ]
        inner = OptunaSearch(
            space=space,
            metric="score",
            mode="max",
            points_to_evaluate=start or None,
            sampler=sampler,
            study_name=self._study_name,
            storage=storage,
        )
        self._state.usage_before = usage_before
        self._searcher.provide(candidates, inner)

    def _stopped(self) -> str | None:
        """Why the driver's running trials must stop now (a cancel or a hard stop), or None."""
        if self._state.cancel.is_set():
            return "cancelled"
        return self._state.stop_reason if self._state.hard_stop else None

    async def lanes(self, limiter: Limiter | None = None) -> None:
        """Scores trials on the running event loop until the trial actors took over or the
        search is over: one task per trial actor (at most `_MAX_LANES`), all under ``limiter``
        (default: the cluster's, `RayLimiter`). The searcher's bookkeeping (TPE, the study's
        storage, the records) runs in worker threads: the loop keeps serving calls in flight.
        """
        n = min(self._max_concurrent_trials, _MAX_LANES)
        pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="mipro-lane")
        tasks = [asyncio.ensure_future(self._lane(i, n, pool, limiter)) for i in range(n)]
        try:
            await asyncio.gather(*tasks)
        except BaseException as exc:  # the other lanes and the Tune run must not go on
            self._state.abort(f"stopped: a trial lane of the driver failed ({exc!r})")
            await asyncio.gather(*tasks, return_exceptions=True)  # they stop at once
            raise
        finally:
            pool.shutdown(wait=False)

    async def _lane(
        self, lane: int, lanes: int, pool: ThreadPoolExecutor, limiter: Limiter | None
    ) -> None:
        loop = asyncio.get_running_loop()
        for n in itertools.count():
            trial_id = f"driver-{lane}-{n}"
            claim = functools.partial(self._searcher.claim, trial_id, retire_after=lanes - lane)
            config = await loop.run_in_executor(pool, claim)
            if config == Searcher.FINISHED:
                return
            if isinstance(config, dict):
                await self._score_claimed(trial_id, config, pool, limiter)

    async def _score_claimed(
        self,
        trial_id: str,
        config: dict[str, object],
        pool: ThreadPoolExecutor,
        limiter: Limiter | None,
    ) -> None:
        """Scores a claimed trial and always ends it (else the search would wait for it)."""
        try:
            outcome = await evaluate_config(
                config, self._spec, stopped=self._stopped, limiter=limiter
            )
        except Exception as exc:  # recorded as a failed trial with its reason, like a crash
            logger.warning("a trial scored in the driver raised %r", exc)
            outcome = TrialOutcome(score=0.0, failed=True, error=f"the trial raised {exc!r}")
        except BaseException:  # e.g. a cancellation, re-raised: end the trial here and now
            self._end_claimed(
                trial_id, TrialOutcome(score=0.0, failed=True, error="the trial was interrupted")
            )
            raise
        await asyncio.get_running_loop().run_in_executor(pool, self._end_claimed, trial_id, outcome)

    def _end_claimed(self, trial_id: str, outcome: TrialOutcome) -> None:
        if outcome.failed and self._stopped() is not None:
            self._searcher.drop(trial_id, outcome)
        else:
            self._searcher.on_trial_complete(trial_id, outcome.model_dump())

    def abort(self, reason: str) -> None:
        """Stops the search and its running trials."""
        self._state.abort(reason)

    def join(self) -> None:
        """Waits for the Tune run to end (if started); re-raises its exception."""
        if self._run is None:
            return
        try:
            self._run.join()
        except BaseException as exc:  # the lanes must not go on with the search
            self._state.abort(f"stopped: the search failed ({exc!r})")
            raise

    def _fit(self) -> None:
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, spec=self._spec), {"cpu": _TRIAL_CPUS}
        )
        plan = self._state.plan
        max_samples = (
            2 * plan.num_trials
            + plan.num_trials // plan.full_eval_steps
            + 2 * self._max_concurrent_trials  # warm-ups, and room for the last ones' asks
            + 4
        )
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=self._searcher,
                num_samples=max_samples,
                max_concurrent_trials=self._max_concurrent_trials,
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=self._study_name,
                storage_path=self._tune_dir,
                stop=_Stopper(self._searcher),
                callbacks=[
                    _NoCSV(),  # type: ignore[no-untyped-call]
                    _NoJSON(),  # type: ignore[no-untyped-call]
                    _NoTBX(),
                    _TrialStarted(self._searcher),
                ],
                verbose=0,
                failure_config=tune.FailureConfig(max_failures=1),
                log_to_file=True,
            ),
        )
        try:
            tuner.fit()
        except BaseException as exc:  # the driver's lanes must stop too (they may wait on it)
            self._state.abort(f"stopped: the search failed ({exc!r})")
            raise
