"""`MIPRO`: the optimizer facade. Bootstrap demos, propose instructions, search on Ray Tune.

Phases of one run (each persisted in the run directory, so a killed run resumes where it was):

1. **bootstrapping**: demo sets per predictor with the teacher LM, while the dataset summary
   and program description are drafted concurrently by the proposer LM;
2. **proposing**: instruction candidates per predictor (concurrent calls);
3. **searching**: Ray Tune trials proposed by TPE (see `mipro_ray.search`).

All LLM traffic goes through one cluster-wide limiter per endpoint (`mipro_ray.ray_limiter`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Literal, TypeVar

import optuna
import ray
from pydantic import BaseModel, ConfigDict, Field

from mipro_ray import telemetry
from mipro_ray._background import Background, wait_event
from mipro_ray.bootstrap import DemoSets, bootstrap_demo_sets
from mipro_ray.config import MiproSettings, ResolvedSettings
from mipro_ray.errors import ConfigError, MiproError, StorageError
from mipro_ray.limiter import Limiter, LocalLimiter
from mipro_ray.lm import LM, LMConfig, Usage
from mipro_ray.metrics import Metric, resolve_metric
from mipro_ray.program import Program
from mipro_ray.propose import (
    InstructionCandidates,
    describe_program,
    propose_instructions,
    summarize_dataset,
)
from mipro_ray.ray_limiter import HandoverLimiter, RayLimiter, get_limiter_actor
from mipro_ray.report import write_report
from mipro_ray.rundir import RunDir
from mipro_ray.search import (
    Candidates,
    SearchPlan,
    SearchRun,
    SearchState,
    TrialRecord,
    TrialSpec,
    apply_params,
    baseline_params,
)
from mipro_ray.signature import Example

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
_Prepared = tuple[Candidates, dict[str, Usage], list[str]]


Phase = Literal[
    "queued", "bootstrapping", "proposing", "searching", "finished", "failed", "cancelled"
]


class Progress(BaseModel):
    """Where a run stands."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    phase: Phase
    trials_done: int = 0
    trials_planned: int = 0
    best_full_score: float | None = None
    best_minibatch_score: float | None = None
    baseline_score: float | None = None
    calls: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    elapsed_s: float = 0.0


class RunEvent(BaseModel):
    """A phase change or a finished trial, for progress bars and event streams."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["phase", "trial"]
    message: str
    progress: Progress
    trial: TrialRecord | None = None


class CallProjection(BaseModel):
    """Projected LLM calls of each phase (upper bounds, before caching)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap: int
    propose: int
    search: int

    @property
    def total(self) -> int:
        """All phases."""
        return self.bootstrap + self.propose + self.search


class MiproResult(BaseModel):
    """The outcome of `MIPRO.compile`.

    Attributes:
        program: The best program by full-validation score (the baseline if nothing beat it).
        best_score: Its full-validation score.
        baseline_score: The unoptimized program's full-validation score.
        best_params: The chosen candidate indices (and temperatures).
        trials: Every finished trial, in order.
        usage: LM usage of the whole run; ``usage_by_phase`` splits it.
        stop_reason: Why the search ended.
        run_dir: Where the results are.
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    program: Program
    best_score: float | None
    baseline_score: float | None
    best_params: dict[str, int | float]
    trials: list[TrialRecord]
    usage: Usage
    usage_by_phase: dict[str, Usage]
    stop_reason: str
    run_dir: str
    projection: CallProjection
    wall_s: float
    proposer_failures: list[str] = Field(default_factory=list)


class MIPRO:
    """MIPROv2 on Ray Tune.

    Example:
        >>> mipro = MIPRO(student=LMConfig(model="gpt-4o-mini"), metric="exact_match")
        >>> result = mipro.compile(program, trainset=train, valset=val)
        >>> result.program.save("best.json")
    """

    def __init__(
        self,
        *,
        student: LMConfig,
        metric: Metric | str,
        teacher: LMConfig | None = None,
        proposer: LMConfig | None = None,
        settings: MiproSettings | None = None,
        run_dir: str | None = None,
        storage_url: str | None = None,
        ray_address: str | None = None,
        on_event: Callable[[RunEvent], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        """Configures a run.

        Args:
            student: The LM the optimized program will run on.
            metric: A metric callable, a built-in name or ``"module:function"``.
            teacher: The LM that bootstraps demos (default: the student).
            proposer: The LM that writes instructions (default: the teacher).
            settings: Optimizer settings (default: the ``light`` preset).
            run_dir: Local path or pyarrow URI for results; rerunning on it resumes.
                Default: a new temporary directory.
            storage_url: SQLAlchemy URL of the Optuna study storage (default: ``study.db``
                in a local run directory).
            ray_address: Ray cluster to use when Ray is not initialized yet (default: the
                ``RAY_ADDRESS`` environment variable, else a local cluster).
            on_event: Called (on the driver) at every phase change and finished trial.
            cancel: Set it to stop the run promptly (running trials stop, LM calls stop).
        """
        self.student = student
        self.teacher = teacher if teacher is not None else student
        self.proposer = proposer if proposer is not None else self.teacher
        self.metric = resolve_metric(metric)
        self.metric_name = (
            metric if isinstance(metric, str) else getattr(metric, "__name__", "metric")
        )
        self.settings = settings if settings is not None else MiproSettings()
        self.run_dir = run_dir
        self.storage_url = storage_url
        self.ray_address = ray_address
        self.on_event = on_event
        self.cancel = cancel if cancel is not None else threading.Event()
        self._start = time.perf_counter()
        self._phase: Phase = "queued"
        self._emit_lock = threading.Lock()  # the search thread emits trial events too

    # -- public -----------------------------------------------------------------------------

    def project_calls(
        self, program: Program, *, n_train: int, n_val: int, resolved: ResolvedSettings
    ) -> CallProjection:
        """Upper bounds of the LLM calls of each phase (one program run = one call per step)."""
        s = resolved.settings
        steps = len(program.named_predictors())
        boot_sets = max(resolved.num_candidates - 2, 0)
        bootstrap = min(n_train, boot_sets * max(s.max_bootstrapped_demos, 1) * 2) * steps
        propose = 5 + 1 + 1 + steps * (resolved.num_candidates - 1)
        minibatch = min(s.minibatch_size, n_val)
        search = (n_val * (1 + resolved.num_full_evals()) + resolved.num_trials * minibatch) * steps
        return CallProjection(bootstrap=bootstrap, propose=propose, search=search)

    def compile(
        self, program: Program, *, trainset: Sequence[Example], valset: Sequence[Example]
    ) -> MiproResult:
        """Optimizes ``program``; resumes if the run directory holds an interrupted run.

        Raises:
            ConfigError: empty datasets or settings that do not fit the program.
            StorageError: the run directory holds a different run.
            LMError / EvaluationError: the teacher or proposer cannot work at all.
        """
        self._start = time.perf_counter()
        if not trainset or not valset:
            raise ConfigError("MIPRO needs a non-empty trainset and valset")
        predictors = program.named_predictors()
        resolved = self.settings.resolve(num_predictors=len(predictors))
        s = resolved.settings
        val = _sample(list(valset), resolved.max_val_size, seed=s.seed)
        train = list(trainset)
        run_dir = RunDir(
            self.run_dir if self.run_dir is not None else tempfile.mkdtemp(prefix="mipro-run-")
        )
        self._write_config(run_dir, program, resolved, n_train=len(train), n_val=len(val))
        projection = self.project_calls(
            program, n_train=len(train), n_val=len(val), resolved=resolved
        )
        logger.info(
            "projected LLM calls (upper bounds): bootstrap %d, propose %d, search %d (total %d); "
            "%d trials, %d candidates, %d validation examples",
            projection.bootstrap, projection.propose, projection.search, projection.total,
            resolved.num_trials, resolved.num_candidates, len(val),
        )  # fmt: skip
        plan = SearchPlan(
            num_trials=resolved.num_trials,
            full_eval_steps=s.full_eval_steps,
            baseline=baseline_params(predictors),
            max_calls=s.budget.max_calls,
            max_tokens=s.budget.max_tokens,
            max_cost_usd=s.budget.max_cost_usd,
            patience=s.budget.patience,
        )
        state = SearchState(
            plan,
            records=run_dir.read_trials(),
            usage_before=Usage(),
            on_record=lambda r: self._on_record(run_dir, state, r),
            cancel=self.cancel,
        )
        spec = TrialSpec(
            program=program,
            valset=val,
            metric=self.metric,
            lm=self.student,
            minibatch_size=s.minibatch_size,
            concurrency=s.trial_concurrency
            if s.trial_concurrency is not None
            else s.minibatch_size,
            max_error_fraction=s.max_error_fraction,
            seed=s.seed,
        )
        storage_url = self._storage_url(run_dir)
        search = SearchRun(
            spec,
            state,
            study_name=_study_name(run_dir),
            temperature_range=s.temperature_range,
            max_concurrent_trials=s.trial_actors(self.student.max_concurrency),
            tune_dir=_tune_dir(run_dir),
        )
        # One limiter per endpoint (configs that differ in sampling settings share one).
        endpoints = {c.endpoint_key(): c for c in (self.proposer, self.teacher, self.student)}
        handover: dict[str, HandoverLimiter] | None = None
        if self._starts_local_cluster(endpoints.values()):
            # Until the new local cluster runs (seconds), this driver is the endpoint's only
            # client: it works under an in-process limiter meanwhile (see `HandoverLimiter`).
            handover = {
                key: HandoverLimiter(LocalLimiter(max_in_flight=c.max_concurrency))
                for key, c in endpoints.items()
            }
        else:
            self._ensure_ray()
            for config in endpoints.values():
                get_limiter_actor(config, wait=False)  # its process starts meanwhile
        # The driver's event loop bootstraps demos and proposes instructions while the
        # search's lanes score the baseline (which needs no candidates), then trials, until
        # the trial actors of the Tune run take over.
        driver = Background(
            lambda: asyncio.run(
                self._drive(program, train, resolved, run_dir, search, handover, storage_url)
            ),
            name="mipro-driver",
        )
        try:
            if handover is not None:
                self._ensure_ray()
                for key, config in endpoints.items():
                    # Takes effect once the limiter actor answers (its process starts
                    # meanwhile; the driver's calls go on under the local limiter).
                    get_limiter_actor(config, wait=False)
                    handover[key].hand_over(RayLimiter.for_config(config))
                for limiter in handover.values():
                    wait_event(limiter.handed_over)
                    if limiter.error is not None:
                        raise limiter.error
            for config in endpoints.values():
                # Compares the limits of an existing limiter, and waits until it answers:
                # the trial actors' processes start after it (a node starts as many worker
                # processes at once as it has CPUs), so the driver's calls do not wait
                # behind them.
                get_limiter_actor(config)
            if not self.cancel.is_set():
                search.start()
        except BaseException as exc:
            # Raise at once: the lanes stop, a started Tune run is joined; the preparation
            # (minutes, maybe) is left to finish in its daemon thread (its candidates are saved
            # for a rerun).
            search.abort(f"stopped: the search could not start ({exc!r})")
            logger.warning("the search could not start; the preparation thread is left to end")
            with contextlib.suppress(BaseException):  # the first error is the one to raise
                search.join()
            raise
        try:
            candidates, prep_usage, failures = driver.join()
        except BaseException:
            search.abort("stopped: the optimizer failed before the search")
            search.join()
            raise
        search.join()
        return self._finish(program, candidates, state, run_dir, prep_usage, projection, failures)

    # -- phases -----------------------------------------------------------------------------

    async def _drive(
        self,
        program: Program,
        train: list[Example],
        resolved: ResolvedSettings,
        run_dir: RunDir,
        search: SearchRun,
        handover: dict[str, HandoverLimiter] | None,
        storage_url: str,
    ) -> _Prepared:
        """The driver's event loop: prepares the candidates and provides them to the search,
        while the search's lanes score trials on the same loop, under the same limiters.
        The study's storage opens meanwhile in a worker thread (a new SQLite file takes about
        a second of schema set-up)."""
        try:
            lanes = asyncio.ensure_future(
                search.lanes(None if handover is None else handover[self.student.endpoint_key()])
            )
            prep = asyncio.ensure_future(
                self._candidates(program, train, resolved, run_dir, handover)
            )
            try:
                prepared, storage = await asyncio.gather(
                    prep, asyncio.to_thread(self._open_storage, storage_url)
                )
                candidates, prep_usage, _ = prepared
                usage_before = prep_usage.get("bootstrap", Usage()) + prep_usage.get(
                    "propose", Usage()
                )
                self._set_phase("searching", search.state)
                await asyncio.to_thread(
                    search.provide, candidates, usage_before=usage_before, storage=storage
                )
            except BaseException as exc:
                search.abort(f"stopped: the optimizer failed before the search ({exc!r})")
                prep.cancel()  # e.g. the storage failed: stop at once, its calls too
                await asyncio.gather(prep, lanes, return_exceptions=True)  # nothing held after
                raise
            await lanes
            return prepared
        finally:
            for limiter in (handover or {}).values():
                await limiter.aclose()

    async def _candidates(
        self,
        program: Program,
        train: list[Example],
        resolved: ResolvedSettings,
        run_dir: RunDir,
        handover: dict[str, HandoverLimiter] | None,
    ) -> _Prepared:
        saved = run_dir.read_json("candidates.json")
        if isinstance(saved, dict):
            logger.info(
                "resuming: demo sets and instruction candidates loaded from %s", run_dir.location
            )
            usage = {k: Usage.model_validate(v) for k, v in saved.get("usage", {}).items()}
            return (
                Candidates.model_validate(saved["candidates"]),
                usage,
                list(saved.get("failures", [])),
            )
        self._set_phase("bootstrapping", None)
        demo_sets, instructions, usage = await self._prepare(program, train, resolved, handover)
        candidates = Candidates(instructions=instructions.candidates, demo_sets=demo_sets.sets)
        run_dir.write_json(
            "candidates.json",
            {
                "candidates": candidates.model_dump(mode="json"),
                "dataset_summary": instructions.dataset_summary,
                "program_description": instructions.program_description,
                "failures": instructions.failures,
                "bootstrap": {
                    "attempted": demo_sets.n_attempted,
                    "successful": demo_sets.n_successful,
                },
                "usage": {k: u.model_dump(mode="json") for k, u in usage.items()},
            },
        )
        return candidates, usage, list(instructions.failures)

    async def _prepare(
        self,
        program: Program,
        train: list[Example],
        resolved: ResolvedSettings,
        handover: dict[str, HandoverLimiter] | None,
    ) -> tuple[DemoSets, InstructionCandidates, dict[str, Usage]]:
        s = resolved.settings
        teacher = self._lm(self.teacher, handover)
        proposer = self._lm(self.proposer, handover)
        try:
            # The dataset summary and program description do not need the demos: draft them
            # while the teacher bootstraps, so the pipe stays full.
            boot = bootstrap_demo_sets(
                program,
                train,
                metric=self.metric,
                lm=teacher,
                num_sets=resolved.num_candidates,
                max_bootstrapped_demos=s.max_bootstrapped_demos,
                max_labeled_demos=s.max_labeled_demos,
                seed=s.seed,
                metric_threshold=s.metric_threshold,
                concurrency=self.teacher.max_concurrency,
            )
            summary = summarize_dataset(
                train, lm=proposer, seed=s.seed, concurrency=self.proposer.max_concurrency
            )
            description = describe_program(program, lm=proposer)
            demo_sets, dataset_summary, program_description = await asyncio.gather(
                boot,
                _none_on_failure(summary, "dataset summary"),
                _none_on_failure(description, "program description"),
            )
            boot_usage = teacher.usage
            self._set_phase("proposing", None)
            instructions = await propose_instructions(
                program,
                train,
                demo_sets,
                lm=proposer,
                num_candidates=resolved.num_candidates,
                seed=s.seed,
                temperature=s.proposal_temperature,
                dataset_summary=dataset_summary,
                program_description=program_description,
                concurrency=self.proposer.max_concurrency,
            )
            propose_usage = proposer.usage
        finally:
            for lm in (teacher, proposer):
                await lm.aclose()
                if isinstance(lm.limiter, RayLimiter):  # not the run's hand-over limiter
                    await lm.limiter.aclose()
        return demo_sets, instructions, {"bootstrap": boot_usage, "propose": propose_usage}

    def _lm(self, config: LMConfig, handover: dict[str, HandoverLimiter] | None = None) -> LM:
        limiter: Limiter = (
            handover[config.endpoint_key()]
            if handover is not None
            else RayLimiter.for_config(config)
        )
        # The preparation is the run's critical path (trials may run beside it): first in line.
        return LM(config, limiter=limiter, observer=telemetry.record_lm_call, priority=1)

    def _finish(
        self,
        program: Program,
        candidates: Candidates,
        state: SearchState,
        run_dir: RunDir,
        prep_usage: dict[str, Usage],
        projection: CallProjection,
        failures: list[str],
    ) -> MiproResult:
        full = [
            r for r in state.records if r.kind in ("baseline", "full") and r.state == "complete"
        ]
        baseline = next((r for r in full if r.kind == "baseline"), None)
        best = max(
            full,
            key=lambda r: (r.score if r.score is not None else -1.0, r.kind == "baseline"),
            default=None,
        )
        best_params = best.params if best is not None else state.plan.baseline
        best_program = apply_params(program, candidates, best_params)
        search_usage = Usage(
            calls=sum(r.calls for r in state.records),
            cache_hits=sum(r.cache_hits for r in state.records),
            http_requests=sum(r.http_requests for r in state.records),
            prompt_tokens=sum(r.prompt_tokens for r in state.records),
            completion_tokens=sum(r.completion_tokens for r in state.records),
            cost_usd=sum(r.cost_usd for r in state.records),
        )
        by_phase = {**prep_usage, "search": search_usage}
        total = Usage()
        for u in by_phase.values():
            total = total + u
        cancelled = self.cancel.is_set()
        stop_reason = "cancelled" if cancelled else (state.stop_reason or "completed")
        best_score = best.score if best is not None else None
        run_dir.write_json("best_program.json", best_program.state().model_dump(mode="json"))
        run_dir.write_json("best_program.ax.json", best_program.to_ax(best_score=best_score))
        run_dir.write_json(
            "usage.json",
            {k: u.model_dump(mode="json") for k, u in {**by_phase, "total": total}.items()},
        )
        wall = time.perf_counter() - self._start
        result = MiproResult(
            program=best_program,
            best_score=best_score,
            baseline_score=baseline.score if baseline is not None else None,
            best_params=best_params,
            trials=state.records,
            usage=total,
            usage_by_phase=by_phase,
            stop_reason=stop_reason,
            run_dir=run_dir.location,
            projection=projection,
            wall_s=wall,
            proposer_failures=failures,
        )
        run_dir.write_json(
            "result.json",
            result.model_dump(mode="json", exclude={"program", "trials"}),
        )
        try:
            write_report(run_dir, result)
        except (MiproError, OSError, ValueError) as exc:  # a plot must not cost the results
            logger.warning("could not write the run report: %s", exc, exc_info=exc)
        self._set_phase("cancelled" if cancelled else "finished", state)
        return result

    # -- helpers ----------------------------------------------------------------------------

    def _write_config(
        self,
        run_dir: RunDir,
        program: Program,
        resolved: ResolvedSettings,
        *,
        n_train: int,
        n_val: int,
    ) -> None:
        config = {
            "settings": resolved.model_dump(mode="json"),
            "student": self.student.model_dump(mode="json"),
            "teacher": self.teacher.model_dump(mode="json"),
            "proposer": self.proposer.model_dump(mode="json"),
            "metric": self.metric_name,
            "program": program.state().model_dump(mode="json"),
            "n_train": n_train,
            "n_val": n_val,
        }
        existing = run_dir.read_json("config.json")
        if isinstance(existing, dict):
            if existing != config:
                changed = sorted(k for k in config if existing.get(k) != config[k])
                raise StorageError(
                    f"run directory '{run_dir.location}' holds a run with a different "
                    f"configuration ({', '.join(changed)} differ); resume with the same settings "
                    "or use a new run_dir"
                )
            logger.info("resuming the run in %s", run_dir.location)
            return
        run_dir.write_json("config.json", config)

    def _starts_local_cluster(self, lm_configs: Iterable[LMConfig]) -> bool:
        """Whether `_ensure_ray` will start a new local cluster that no other driver uses.

        Only then may the driver use an in-process limiter until the cluster's exists. Not
        with requests- or tokens-per-minute limits (the window's history would not carry
        over to the cluster limiter).
        """
        if ray.is_initialized() or any(c.rpm or c.tpm for c in lm_configs):
            return False
        if self.ray_address == "local":
            return True
        if self.ray_address is not None:
            return False
        try:  # how ray.init resolves a missing address: RAY_ADDRESS, then a running cluster
            from ray._private.services import canonicalize_bootstrap_address

            return canonicalize_bootstrap_address(None) is None  # type: ignore[arg-type]
        except Exception:  # a private helper: if it changed, take the safe path
            logger.debug("cannot tell whether ray.init starts a cluster", exc_info=True)
            return False

    def _ensure_ray(self) -> None:
        if not ray.is_initialized():
            # No dashboard: its processes cost seconds of start-up CPU, and the run reports
            # its own progress. (Ignored when connecting to an existing cluster.)
            ray.init(address=self.ray_address, log_to_driver=False, include_dashboard=False)

    def _storage_url(self, run_dir: RunDir) -> str:
        url = self.storage_url if self.storage_url is not None else run_dir.sqlite_url()
        if url is None:
            raise ConfigError(
                f"run directory '{run_dir.location}' is not local: give storage_url (e.g. a "
                "PostgreSQL URL) for the Optuna study"
            )
        return url

    @staticmethod
    def _open_storage(url: str) -> optuna.storages.BaseStorage:
        try:
            return optuna.storages.RDBStorage(url)
        except Exception as exc:  # SQLAlchemy raises many types; surface them as ours
            raise StorageError(f"cannot open the study storage: {exc}") from exc

    def _on_record(self, run_dir: RunDir, state: SearchState, record: TrialRecord) -> None:
        run_dir.write_trials(state.records)
        progress, run = self._progress(state), run_dir.location.rstrip("/").rsplit("/", 1)[-1]
        telemetry.best_score(run, "full", progress.best_full_score)
        telemetry.best_score(run, "minibatch", progress.best_minibatch_score)
        verb = "failed" if record.state == "failed" else f"scored {record.score:.3f}"
        self._emit("trial", f"trial {record.number} ({record.kind}) {verb}", state, record)

    def _set_phase(self, phase: Phase, state: SearchState | None) -> None:
        self._phase = phase
        self._emit("phase", f"phase: {phase}", state, None)

    def _emit(
        self,
        kind: Literal["phase", "trial"],
        message: str,
        state: SearchState | None,
        trial: TrialRecord | None,
    ) -> None:
        if self.on_event is None:
            return
        with self._emit_lock:
            self.on_event(
                RunEvent(kind=kind, message=message, progress=self._progress(state), trial=trial)
            )

    def _progress(self, state: SearchState | None) -> Progress:
        elapsed = time.perf_counter() - self._start
        if state is None:
            return Progress(phase=self._phase, elapsed_s=elapsed)
        calls, tokens, cost = state.usage_total()
        full = [
            r.score for r in state.records if r.kind in ("full", "baseline") and r.score is not None
        ]
        mini = [r.score for r in state.records if r.kind == "minibatch" and r.score is not None]
        baseline = next((r.score for r in state.records if r.kind == "baseline"), None)
        return Progress(
            phase=self._phase,
            trials_done=state.minibatch_done(),
            trials_planned=state.plan.num_trials,
            best_full_score=max(full, default=None),
            best_minibatch_score=max(mini, default=None),
            baseline_score=baseline,
            calls=calls,
            tokens=tokens,
            cost_usd=cost,
            elapsed_s=elapsed,
        )


async def _none_on_failure(coro: Awaitable[_T], what: str) -> _T | None:
    """Awaits a grounding step; on failure logs it and returns None (the proposer retries it
    and records the failure with the candidates)."""
    try:
        return await coro
    except MiproError as exc:
        logger.warning("%s failed: %s; proposing without it", what, exc)
        return None


def _sample(examples: list[Example], size: int | None, *, seed: int) -> list[Example]:
    if size is None or len(examples) <= size:
        return examples
    return random.Random(seed).sample(examples, size)


def _study_name(run_dir: RunDir) -> str:
    return "mipro-" + hashlib.sha256(run_dir.location.encode()).hexdigest()[:12]


def _tune_dir(run_dir: RunDir) -> str:
    if run_dir.local_path is not None:
        return str(run_dir.local_path / "tune")
    return tempfile.mkdtemp(prefix="mipro-tune-")
