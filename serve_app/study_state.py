"""One study held in memory, with every change written through to the database.

:class:`StudyState` holds one study's Optuna study on ``InMemoryStorage`` (so the sampler works
at in-memory speed) and is the **only writer** of that study: it lives in the study's host
actor (``serve_app.study_host``), exactly one per study cluster-wide, which runs its calls one
at a time, so trial numbers are distinct.

Durability: each state change (a new trial with its parameters; a trial's final state, value
and intermediate values; a job's status) is committed to the database **before** the call
answers. If a write fails, the in-memory copy is discarded and rebuilt from the database on the
next call. When the host process dies, Ray restarts it and it rebuilds each study from the
database on its next call: no told trial is lost, and RUNNING trials can still be evaluated by
number.

Stale trials: a RUNNING trial older than ``stale_trial_seconds`` is marked FAIL (with a
``fail_reason`` system attribute) lazily, on every suggest, evaluate, results and progress call.

Timeouts: the request's optional ``timeout`` is counted from the job's first suggest (when it
becomes ``running``; see :attr:`~serve_app.jobs.JobRecord.deadline`). It is checked lazily too,
on every call, not by a timer: the first call after the deadline marks a running job
``failed``, with ``error`` naming the timeout and the trials told before it, and stamps
``completed_at`` with the deadline itself. From then on suggest answers 409, while trials
suggested before the deadline can still be evaluated, so no finished work is lost. A job whose
``n_trials`` were all told before the deadline is ``completed`` and stays so.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone

import optuna
from optuna.distributions import BaseDistribution
from optuna.storages import InMemoryStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from serve_app.database import FAIL_REASON_KEY, Database, TrialEnd, connect, utcnow
from serve_app.errors import ConflictError, NotFoundError
from serve_app.jobs import FINAL_STATUSES, JobRecord, JobStore, with_status
from serve_app.models import (
    Direction,
    EvaluationResponse,
    JobStatus,
    OptimizationResult,
    Progress,
    SuggestResponse,
    TrialOut,
)
from serve_app.samplers import make_pruner, make_sampler, search_space
from serve_app.settings import Settings

logger = logging.getLogger(__name__)


def _aware(value: datetime | None) -> datetime | None:
    """Optuna's naive local datetimes as aware UTC."""
    return None if value is None else value.astimezone(timezone.utc)


@dataclass
class _Loaded:
    """The in-memory copy of one study, rebuilt from the database on (re)load."""

    study_id: int
    study: optuna.Study
    space: dict[str, BaseDistribution]
    db_trial_ids: list[int]
    running: dict[int, optuna.trial.Trial]
    job: JobRecord | None
    last_told: datetime | None


class StudyState:
    """The owner of one study; see the module docstring.

    Args:
        study_name: The study this instance owns.
        settings: Database and stale-trial settings.
    """

    def __init__(self, study_name: str, settings: Settings) -> None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._name = study_name
        self._settings = settings
        self._db: Database | None = None
        self._loaded: _Loaded | None = None

    # -- public calls (each one is a Ray actor method) -------------------------------------

    def suggest(self) -> SuggestResponse:
        """Asks the sampler for a new trial and records it as RUNNING.

        Raises:
            NotFoundError: The study does not exist.
            ConflictError: The study's job was cancelled or failed (e.g. its timeout elapsed;
                the message carries the job's error), or the study has no parameter spec (it
                was not created by ``POST /optimize``).
        """
        loaded = self._load_checked()
        job = loaded.job
        if job is None or not loaded.space:
            raise ConflictError(
                f"study '{self._name}' was not created by POST /optimize, so it has no "
                "parameter spec to suggest from"
            )
        if job.status in (JobStatus.CANCELLED, JobStatus.FAILED):
            why = job.status.value
            if job.error is not None:
                why += f" ({job.error})"
            raise ConflictError(
                f"job {job.job_id} of study '{self._name}' is {why}; no more trials are "
                f"suggested. The results so far are kept (GET /studies/{self._name}/results) "
                "and trials suggested earlier can still be evaluated. To continue, start a new "
                "study with POST /optimize."
            )
        with self._reload_on_error():
            trial = loaded.study.ask(fixed_distributions=loaded.space)
            number = trial.number
            if number != len(loaded.db_trial_ids):
                raise AssertionError(
                    f"in-memory trial {number} != database trial {len(loaded.db_trial_ids)}"
                )
            started = _aware(trial.datetime_start)
            db_id = self._database().insert_trial(
                study_id=loaded.study_id,
                number=number,
                params=trial.params,
                distributions=loaded.space,
                datetime_start=started if started is not None else utcnow(),
            )
            loaded.db_trial_ids.append(db_id)
            loaded.running[number] = trial
            if job.status is JobStatus.PENDING:
                self._save_job(loaded, with_status(job, JobStatus.RUNNING))
        return SuggestResponse(trial_number=number, params=dict(trial.params))

    def evaluate(
        self, trial_number: int, value: float, intermediate_values: Mapping[int, float] | None
    ) -> EvaluationResponse:
        """Tells the value of a RUNNING trial; intermediate values go to the pruner first.

        Raises:
            NotFoundError: The study or the trial does not exist.
            ConflictError: The trial is already finished (complete, pruned or failed).

        A trial suggested before the job ended (cancelled, or failed by its timeout) can still
        be evaluated; the job keeps its status and its progress snapshot is refreshed.
        """
        loaded = self._load_checked()
        if trial_number >= len(loaded.db_trial_ids):
            raise NotFoundError(
                f"study '{self._name}' has no trial {trial_number} "
                f"(it has {len(loaded.db_trial_ids)} trials)"
            )
        trial = loaded.running.get(trial_number)
        if trial is None:
            frozen = loaded.study._storage.get_trial(
                loaded.study._storage.get_trial_id_from_study_id_trial_number(
                    loaded.study._study_id, trial_number
                )
            )
            reason = frozen.system_attrs.get(FAIL_REASON_KEY)
            because = f": {reason}" if reason else ""
            raise ConflictError(
                f"trial {trial_number} of study '{self._name}' is already finished "
                f"({frozen.state.name}{because}); a trial can be evaluated once"
            )
        with self._reload_on_error():
            pruned = False
            for step in sorted(intermediate_values or {}):
                assert intermediate_values is not None
                trial.report(intermediate_values[step], step)
                if trial.should_prune():
                    pruned = True
                    break
            if pruned:
                frozen = loaded.study.tell(trial, state=TrialState.PRUNED)
            else:
                frozen = loaded.study.tell(trial, value)
            self._write_end(loaded, frozen, fail_reason=None)
            del loaded.running[trial_number]
            loaded.last_told = utcnow()
            self._update_job_after_tell(loaded)
        state = "PRUNED" if pruned else "COMPLETE"
        return EvaluationResponse(
            message=f"trial {trial_number} recorded as {state}",
            study_name=self._name,
            trial_number=trial_number,
            state=state,
            pruned=pruned,
        )

    def results(self) -> OptimizationResult:
        """Every trial of the study and the best COMPLETE one (null best fields if none)."""
        loaded = self._load_checked()
        trials = loaded.study.get_trials(deepcopy=False)
        out = [_trial_out(t) for t in trials]
        best = _best(trials, loaded.study.direction)
        maximize = loaded.study.direction == StudyDirection.MAXIMIZE
        return OptimizationResult(
            study_name=self._name,
            best_trial=None if best is None else out[best.number],
            best_value=None if best is None else best.value,
            best_params=None if best is None else dict(best.params),
            trials=out,
            n_trials=len(out),
            direction=Direction.MAXIMIZE if maximize else Direction.MINIMIZE,
        )

    def progress(self) -> Progress | None:
        """The job's progress (trials told out of ``n_trials``), None without a job."""
        loaded = self._load_checked()
        return self._progress(loaded)

    def cancel(self) -> JobRecord:
        """Cancels the study's job: later suggests answer 409.

        Raises:
            NotFoundError: The study has no job.
            ConflictError: The job already completed or failed (also when its timeout elapsed
                before this call).
        """
        loaded = self._load()
        self._fail_if_timed_out(loaded)
        job = loaded.job
        if job is None:
            raise NotFoundError(f"study '{self._name}' has no job")
        if job.status is JobStatus.CANCELLED:
            return job
        # with_status refuses (409) a job that already completed or failed
        self._save_job(loaded, with_status(job, JobStatus.CANCELLED))
        assert loaded.job is not None
        return loaded.job

    def delete(self) -> None:
        """Deletes the study; an unfinished job is cancelled and keeps its last progress.

        A job whose timeout elapsed before this call is failed (by the timeout), not cancelled.
        """
        loaded = self._load()
        self._fail_if_timed_out(loaded)
        job = loaded.job
        if job is not None:
            progress = self._progress(loaded)
            if job.status in FINAL_STATUSES:
                updated = replace(job, progress=progress)
            else:
                told = 0 if progress is None else progress.finished
                updated = with_status(
                    job,
                    JobStatus.CANCELLED,
                    error=f"study deleted after {told} of {job.n_trials} trials were told",
                )
                updated = replace(updated, progress=progress)
            self._save_job(loaded, updated)
        self._database().delete_study(loaded.study_id)
        self._loaded = None

    # -- helpers -------------------------------------------------------------------------

    def _database(self) -> Database:
        if self._db is None:
            self._db = connect(self._settings)
        return self._db

    def _load_checked(self) -> _Loaded:
        """`_load`, then the lazy checks every client call runs: stale trials, the timeout."""
        loaded = self._load()
        self._fail_stale(loaded)
        self._fail_if_timed_out(loaded)
        return loaded

    def _load(self) -> _Loaded:
        if self._loaded is not None:
            return self._loaded
        db = self._database()
        study_id = db.study_id(self._name)
        if study_id is None:
            raise NotFoundError(f"study '{self._name}' not found")
        job = JobStore(db.engine).for_study(self._name)
        direction = db.storage.get_study_directions(study_id)[0]
        stored = db.storage.get_all_trials(study_id, deepcopy=False)
        request = job.request if job is not None else None
        seed = None if request is None else request.seed
        if seed is not None:
            # A restarted sampler must not replay the random draws of the first trials.
            seed += len(stored)
        study = optuna.create_study(
            storage=InMemoryStorage(),
            sampler=make_sampler(request.sampler if request else "TPESampler", seed=seed),
            pruner=make_pruner(request.pruner if request else None),
            direction=direction,
            study_name=self._name,
        )
        running: dict[int, optuna.trial.Trial] = {}
        for expected, frozen in enumerate(stored):
            if frozen.number != expected:
                raise AssertionError(f"study '{self._name}' has a gap at trial {expected}")
            study.add_trial(frozen)
            if frozen.state is TrialState.RUNNING:
                memory_id = study._storage.get_trial_id_from_study_id_trial_number(
                    study._study_id, frozen.number
                )
                running[frozen.number] = optuna.trial.Trial(study, memory_id)
        told = [t.datetime_complete for t in stored if t.datetime_complete is not None]
        self._loaded = _Loaded(
            study_id=study_id,
            study=study,
            space=search_space(request.parameters) if request else {},
            db_trial_ids=[t._trial_id for t in stored],
            running=running,
            job=job,
            last_told=_aware(max(told)) if told else None,
        )
        logger.info("loaded study '%s' (%d trials) from the database", self._name, len(stored))
        return self._loaded

    @contextmanager
    def _reload_on_error(self) -> Iterator[None]:
        """Drops the in-memory copy when a change fails, so the next call reloads it."""
        try:
            yield
        except BaseException as exc:
            logger.error("study '%s': discarding the in-memory copy: %s", self._name, exc)
            self._loaded = None
            raise

    def _write_end(self, loaded: _Loaded, frozen: FrozenTrial, *, fail_reason: str | None) -> None:
        value = frozen.value if frozen.values is not None else None
        if value is not None and math.isnan(value):
            value = None
        self._database().finish_trials(
            [
                TrialEnd(
                    trial_id=loaded.db_trial_ids[frozen.number],
                    state=frozen.state,
                    value=value,
                    intermediate_values=dict(frozen.intermediate_values),
                    fail_reason=fail_reason,
                )
            ],
            datetime_complete=_aware(frozen.datetime_complete) or utcnow(),
        )

    def _fail_stale(self, loaded: _Loaded) -> None:
        if not loaded.running:
            return
        limit = self._settings.stale_trial_seconds
        cutoff = datetime.now() - timedelta(seconds=limit)
        stale = [
            number
            for number, trial in loaded.running.items()
            if trial.datetime_start is not None and trial.datetime_start < cutoff
        ]
        if not stale:
            return
        reason = f"not evaluated within {limit:g} s of being suggested (stale trial)"
        with self._reload_on_error():
            ends: list[TrialEnd] = []
            for number in stale:
                trial = loaded.running.pop(number)
                loaded.study._storage.set_trial_system_attr(
                    trial._trial_id, FAIL_REASON_KEY, reason
                )
                loaded.study.tell(trial, state=TrialState.FAIL)
                ends.append(
                    TrialEnd(loaded.db_trial_ids[number], TrialState.FAIL, None, {}, reason)
                )
            self._database().finish_trials(ends, datetime_complete=utcnow())
        logger.warning("study '%s': marked trials %s FAIL: %s", self._name, stale, reason)

    def _progress(self, loaded: _Loaded) -> Progress | None:
        job = loaded.job
        if job is None:
            return None
        trials = loaded.study.get_trials(deepcopy=False)
        counts = {state: 0 for state in TrialState}
        for t in trials:
            counts[t.state] += 1
        finished = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
        best = _best(trials, loaded.study.direction)
        return Progress(
            n_trials=job.n_trials,
            finished=finished,
            complete=counts[TrialState.COMPLETE],
            pruned=counts[TrialState.PRUNED],
            failed=counts[TrialState.FAIL],
            running=counts[TrialState.RUNNING],
            fraction=min(1.0, finished / job.n_trials),
            best_value=None if best is None else best.value,
            best_trial=None if best is None else best.number,
            updated_at=loaded.last_told,
        )

    def _update_job_after_tell(self, loaded: _Loaded) -> None:
        """Completes the job at ``n_trials`` told; refreshes a finished job's snapshot."""
        job = loaded.job
        if job is None:
            return
        progress = self._progress(loaded)
        if job.status in FINAL_STATUSES:
            # A late trial (suggested before the job ended): the status stays, but GET /jobs,
            # which reads the stored snapshot, should count it.
            if job.progress is not None:
                self._save_job(loaded, replace(job, progress=progress))
            return
        if progress is not None and progress.finished >= job.n_trials:
            done = with_status(job, JobStatus.COMPLETED)
            self._save_job(loaded, replace(done, progress=progress))

    def _fail_if_timed_out(self, loaded: _Loaded) -> None:
        """Marks a running job ``failed`` once its deadline has passed (see module docstring)."""
        job = loaded.job
        if job is None or job.status is not JobStatus.RUNNING:
            return
        deadline = job.deadline
        if deadline is None or utcnow() < deadline:
            return
        progress = self._progress(loaded)
        told = 0 if progress is None else progress.finished
        error = (
            f"timeout of {job.request.timeout:g} s was reached after {told} of "
            f"{job.n_trials} trials were told"
        )
        failed = with_status(job, JobStatus.FAILED, error=error)
        self._save_job(loaded, replace(failed, completed_at=deadline, progress=progress))
        logger.warning("study '%s': job %s failed: %s", self._name, job.job_id, error)

    def _save_job(self, loaded: _Loaded, job: JobRecord) -> None:
        try:
            JobStore(self._database().engine).update(job)
        except ConflictError:
            # The stored job already ended without this copy knowing: reload on the next call.
            self._loaded = None
            raise
        loaded.job = job


def _best(trials: list[FrozenTrial], direction: StudyDirection) -> FrozenTrial | None:
    complete = [t for t in trials if t.state is TrialState.COMPLETE and t.value is not None]
    if not complete:
        return None
    if direction == StudyDirection.MAXIMIZE:
        return max(complete, key=lambda t: t.value if t.value is not None else -math.inf)
    return min(complete, key=lambda t: t.value if t.value is not None else math.inf)


def _trial_out(trial: FrozenTrial) -> TrialOut:
    duration = trial.duration
    value = trial.value if trial.values is not None else None
    return TrialOut(
        number=trial.number,
        value=value,
        params=dict(trial.params),
        state=trial.state.name,
        datetime_start=_aware(trial.datetime_start),
        datetime_complete=_aware(trial.datetime_complete),
        duration=None if duration is None else duration.total_seconds(),
    )
