"""The replica-side service: studies and jobs, reached through the per-study actors.

A replica holds no study state: it finds (or creates) the study's actor by name and awaits its
answer, so the event loop never blocks; database work of its own (creating a study, reading
jobs) runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
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
from serve_app.study_actor import StudyState, actor_name

logger = logging.getLogger(__name__)

T = TypeVar("T")

StudyActor = ray.remote(StudyState)
"""Ray actor class of :class:`StudyState`; see :meth:`StudyService._actor` for its options."""


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
        self._handles: dict[str, Any] = {}

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
        """Deletes ``study_name`` and stops its actor."""
        await self._call(study_name, "delete")
        handle = self._handles.pop(study_name, None)
        if handle is not None:
            await self._run(ray.kill, handle)

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
        """The ``limit`` most recent jobs (progress as last recorded)."""
        db = await self._database()
        jobs = await self._run(JobStore(db.engine).recent, limit)
        return [_job_response(job, job.progress, None) for job in jobs]

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

    async def _actor(self, study_name: str) -> Any:
        handle = self._handles.get(study_name)
        if handle is not None:
            return handle
        if not await self._study_exists(study_name):
            raise NotFoundError(f"study '{study_name}' not found")
        handle = await self._run(self._get_or_create_actor, study_name)
        self._handles[study_name] = handle
        return handle

    def _get_or_create_actor(self, study_name: str) -> Any:
        return StudyActor.options(
            name=actor_name(self._settings, study_name),
            namespace=self._settings.actor_namespace,
            lifetime="detached",
            get_if_exists=True,
            num_cpus=0,
            max_restarts=-1,
            max_concurrency=1,
        ).remote(study_name, self._actor_settings)

    async def _call(self, study_name: str, method: str, *args: Any) -> Any:
        for attempt in range(2):
            handle = await self._actor(study_name)
            try:
                return await getattr(handle, method).remote(*args)
            except RayTaskError as exc:
                cause = exc.cause
                if isinstance(cause, NotFoundError):
                    self._handles.pop(study_name, None)
                if isinstance(cause, MiproError):
                    raise cause from None
                raise
            except (ActorDiedError, ActorUnavailableError, RayActorError) as exc:
                self._handles.pop(study_name, None)
                logger.warning("actor of study '%s' unavailable (%s); retrying", study_name, exc)
                if attempt == 1:
                    raise ServiceUnavailableError(
                        f"the actor of study '{study_name}' is unavailable; retry shortly"
                    ) from exc
        raise AssertionError("unreachable")


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
