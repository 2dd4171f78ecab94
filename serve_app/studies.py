"""The replica-side service: studies and jobs, reached through the study host actors.

A replica holds no study state: it finds (or creates) the host that owns a study by name and
awaits its answer, so the event loop never blocks; database work of its own (creating a study,
reading jobs) runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import optuna
import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError

from mipro_ray.errors import MiproError
from serve_app.database import Database, connect, utcnow
from serve_app.errors import ConflictError, NotFoundError, ServiceUnavailableError
from serve_app.jobs import JobRecord, JobStore
from serve_app.models import (
    EvaluationRequest,
    EvaluationResponse,
    JobResponse,
    JobStatus,
    JobStatusResponse,
    OptimizationRequest,
    OptimizationResult,
    Progress,
    SuggestResponse,
)
from serve_app.settings import Settings
from serve_app.study_host import StudyHost, host_index, host_name

logger = logging.getLogger(__name__)

T = TypeVar("T")

StudyHostActor = ray.remote(StudyHost)
"""Ray actor class of :class:`StudyHost`; see :meth:`StudyService._host` for its options."""


class StudyService:
    """Everything the HTTP routes can do, for one replica.

    Args:
        settings: The operator settings (database, stale-trial timeout, actor namespace).
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        # The actors never need the token.
        self._actor_settings = settings.model_copy(update={"auth_token": None})
        self._db: Database | None = None
        self._hosts: dict[int, Any] = {}

    async def _run(self, func: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(func, *args)

    async def _database(self) -> Database:
        if self._db is None:
            self._db = await self._run(connect, self._settings)
        return self._db

    # -- studies -------------------------------------------------------------------------

    async def create(self, request: OptimizationRequest) -> JobResponse:
        """Creates the study and its pending job (the service runs no trials itself).

        Raises:
            ConflictError: A study with that name exists.
        """
        db = await self._database()
        study_name = request.study_name
        if study_name is None:
            study_name = f"study_{uuid.uuid4().hex[:12]}"
        job = JobRecord(
            job_id=str(uuid.uuid4()),
            study_name=study_name,
            status=JobStatus.PENDING,
            n_trials=request.n_trials,
            request=request,
            created_at=utcnow(),
        )
        await self._run(_create_study, db, request, job)
        return JobResponse(
            job_id=job.job_id,
            study_name=job.study_name,
            status=job.status,
            created_at=job.created_at,
        )

    async def suggest(self, study_name: str) -> SuggestResponse:
        """Parameters of a new trial of ``study_name``."""
        result: SuggestResponse = await self._call(study_name, "suggest")
        return result

    async def evaluate(self, study_name: str, body: EvaluationRequest) -> EvaluationResponse:
        """Tells the value of one trial, by number."""
        if body.study_name is not None and body.study_name != study_name:
            raise ConflictError(
                f"body study_name '{body.study_name}' does not match the path's '{study_name}'"
            )
        result: EvaluationResponse = await self._call(
            study_name, "evaluate", body.trial_number, body.value, body.intermediate_values
        )
        return result

    async def results(self, study_name: str) -> OptimizationResult:
        """All trials of ``study_name`` and the best one."""
        result: OptimizationResult = await self._call(study_name, "results")
        return result

    async def delete_study(self, study_name: str) -> None:
        """Deletes ``study_name`` (its job keeps its last progress)."""
        await self._call(study_name, "delete")

    async def list_studies(self) -> list[str]:
        """Names of all studies."""
        db = await self._database()
        return await self._run(db.study_names)

    # -- jobs ----------------------------------------------------------------------------

    async def get_job(self, job_id: str) -> JobStatusResponse:
        """A job with its progress (and the study's results once completed)."""
        job = await self._job(job_id)
        progress = job.progress
        result = None
        if await self._study_exists(job.study_name):
            progress = await self._call(job.study_name, "progress")
            if job.status is JobStatus.COMPLETED:
                result = await self.results(job.study_name)
            job = await self._job(job_id)
        return _job_response(job, progress, result)

    async def cancel_job(self, job_id: str) -> JobStatusResponse:
        """Cancels a job: later suggests on its study answer 409."""
        job = await self._job(job_id)
        if job.status is JobStatus.CANCELLED:
            return _job_response(job, job.progress, None)
        if not await self._study_exists(job.study_name):
            raise ConflictError(f"job {job_id} is already {job.status.value}")
        cancelled: JobRecord = await self._call(job.study_name, "cancel")
        progress: Progress | None = await self._call(job.study_name, "progress")
        return _job_response(cancelled, progress, None)

    async def list_jobs(self, limit: int) -> list[JobStatusResponse]:
        """The ``limit`` most recent jobs (progress as last recorded).

        Timeouts are checked lazily by each study's owner; a running job past its deadline is
        first handed to its owner, so the list shows it ``failed`` rather than still running.
        """
        db = await self._database()
        store = JobStore(db.engine)
        jobs = await self._run(store.recent, limit)
        now = utcnow()
        overdue = [
            job
            for job in jobs
            if job.status is JobStatus.RUNNING and job.deadline is not None and job.deadline <= now
        ]
        if overdue:
            await asyncio.gather(*(self._check_job(job.study_name) for job in overdue))
            jobs = await self._run(store.recent, limit)
        return [_job_response(job, job.progress, None) for job in jobs]

    async def _check_job(self, study_name: str) -> None:
        """Lets the study's owner run its lazy checks (stale trials, timeout)."""
        # Deleted meanwhile: deleting a study ends its job, which the caller's re-read shows.
        with contextlib.suppress(NotFoundError):
            await self._call(study_name, "progress")

    async def _job(self, job_id: str) -> JobRecord:
        db = await self._database()
        job = await self._run(JobStore(db.engine).get, job_id)
        if job is None:
            raise NotFoundError(f"job '{job_id}' not found")
        return job

    async def _study_exists(self, study_name: str) -> bool:
        db = await self._database()
        return await self._run(db.study_id, study_name) is not None

    # -- actors --------------------------------------------------------------------------

    async def warm_up(self) -> None:
        """Starts (or finds) every study host, so no request waits for a process to start."""
        await asyncio.gather(
            *(self._host_call(index, "ready") for index in range(self._settings.study_hosts))
        )

    async def _host(self, index: int) -> Any:
        handle = self._hosts.get(index)
        if handle is None:
            handle = await self._run(self._get_or_create_host, index)
            self._hosts[index] = handle
        return handle

    def _get_or_create_host(self, index: int) -> Any:
        return StudyHostActor.options(
            name=host_name(self._settings, index),
            namespace=self._settings.actor_namespace,
            lifetime="detached",
            get_if_exists=True,
            num_cpus=0,
            max_restarts=-1,
            max_concurrency=self._settings.study_host_threads,
        ).remote(self._actor_settings)

    async def _call(self, study_name: str, method: str, *args: Any) -> Any:
        index = host_index(study_name, self._settings.study_hosts)
        return await self._host_call(index, "call", study_name, method, *args)

    async def _host_call(self, index: int, method: str, *args: Any) -> Any:
        # A crashed host is restarted by Ray (a new process, several seconds); wait for it.
        deadline = time.monotonic() + self._settings.host_restart_wait_seconds
        while True:
            handle = await self._host(index)
            try:
                return await getattr(handle, method).remote(*args)
            except RayTaskError as exc:
                cause = exc.cause
                if isinstance(cause, MiproError):
                    raise cause from None
                raise
            except (ActorDiedError, ActorUnavailableError, RayActorError) as exc:
                self._hosts.pop(index, None)
                if time.monotonic() > deadline:
                    raise ServiceUnavailableError(
                        f"study host {index} is unavailable; retry shortly"
                    ) from exc
                logger.warning("study host %d unavailable (%s); retrying", index, exc)
                await asyncio.sleep(0.25)


def _create_study(db: Database, request: OptimizationRequest, job: JobRecord) -> None:
    direction = optuna.study.StudyDirection[request.objective.direction.name]
    try:
        study_id = db.storage.create_new_study([direction], job.study_name)
    except optuna.exceptions.DuplicatedStudyError as exc:
        raise ConflictError(
            f"study '{job.study_name}' already exists; choose another study_name or "
            "DELETE /studies/{name} first"
        ) from exc
    try:
        JobStore(db.engine).insert(job)
    except Exception:
        db.delete_study(study_id)
        raise


def _job_response(
    job: JobRecord, progress: Progress | None, result: OptimizationResult | None
) -> JobStatusResponse:
    return JobStatusResponse(
        job_id=job.job_id,
        study_name=job.study_name,
        status=job.status,
        created_at=job.created_at,
        started_at=job.started_at,
        completed_at=job.completed_at,
        progress=progress,
        error=job.error,
        result=result,
    )
