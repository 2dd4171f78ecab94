"""HTTP API of server-side MIPRO runs: ``/mipro/jobs``.

Each job is a `RunSpec` run by its own detached Ray actor (`mipro_ray.jobs`), never inside a
request; a replica only starts the actor, records the job in the database and relays the
actor's status, so jobs survive a redeploy. Once a job's actor has exited, its status, events
and result are read from its run directory.

- ``POST /mipro/jobs``: body = `RunSpec`; answers 202 with the queued job's status at once.
  422 names the bad field; 422 also refuses a spec holding something that looks like a literal
  API key (keys are named environment variables on the cluster); 403 when the spec names user
  code (``class_path``, ``module:function`` metrics) and the operator has not allowed it.
- ``GET /mipro/jobs``, ``GET /mipro/jobs/{id}``: `JobStatus` (phase, trials, scores, calls,
  tokens, cost, elapsed, ETA, error).
- ``GET /mipro/jobs/{id}/events``: Server-Sent Events: ``phase`` and ``trial`` events (data: a
  `JobEvent`, id: its ``seq``), then one ``end`` event with the final status. ``?after=N`` or
  ``Last-Event-ID`` resumes.
- ``GET /mipro/jobs/{id}/result``: `JobResult` (best program + Ax export); 409 until it ends.
- ``DELETE /mipro/jobs/{id}``: cancels; waits up to ``?wait=`` seconds for the job to stop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import JsonValue
from ray.exceptions import RayActorError
from sqlalchemy import Column, DateTime, MetaData, String, Table, Text, insert, select
from sqlalchemy.exc import SQLAlchemyError

from mipro_ray.errors import ConfigError, StorageError
from mipro_ray.jobs import (
    JobResult,
    JobStatus,
    custom_code_fields,
    find_secrets,
    get_job_actor,
    read_events,
    read_result,
    read_status,
    start_job,
)
from mipro_ray.spec import RunSpec
from serve_app.database import Database, connect
from serve_app.errors import ConflictError, NotFoundError, ServeAppError
from serve_app.settings import Settings

logger = logging.getLogger(__name__)

_EVENT_POLL_S = 15.0
_STARTUP_GRACE_S = 120.0

_metadata = MetaData()

run_jobs_table = Table(
    "mipro_ray_run_jobs",
    _metadata,
    Column("job_id", String(64), primary_key=True),
    Column("run_dir", Text, nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("spec_json", Text, nullable=False),
)


class ForbiddenError(ServeAppError):
    """The spec asks for something the operator has not allowed (user code)."""

    status_code = 403


@dataclass(frozen=True)
class JobRow:
    """One job record: the spec holds no secrets (refused at submission)."""

    job_id: str
    run_dir: str
    created_at: datetime
    spec: RunSpec


class MiproJobService:
    """Starts job actors, keeps job records, and reads status from actors or run directories.

    Args:
        settings: Database, jobs directory, custom-code switch and job CPUs.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._db: Database | None = None

    async def _database(self) -> Database:
        if self._db is None:
            db = await asyncio.to_thread(connect, self._settings)
            await asyncio.to_thread(_create_table, db)
            self._db = db
        return self._db

    async def create(self, spec: RunSpec) -> JobStatus:
        """Validates what the body schema cannot check, records the job and starts its actor.

        Raises:
            ConfigError: the spec sets ``run_dir``/``storage_url`` or does not build.
            ForbiddenError: the spec names user code and the operator has not allowed it.
        """
        _check_server_fields(spec)
        custom = custom_code_fields(spec)
        if custom and not self._settings.allow_custom_code:
            raise ForbiddenError(
                f"{', '.join(custom)}: custom code (program classes, 'module:function' "
                "metrics) is disabled on this server; use 'predictors' and a built-in metric, "
                "or ask the operator to set MIPRO_RAY_ALLOW_CUSTOM_CODE=true"
            )
        allow = self._settings.allow_custom_code
        spec.program.build(allow_custom=allow)  # ConfigError (422) names the bad predictor
        spec.build_metric(allow_custom=allow)
        db = await self._database()
        job_id = uuid.uuid4().hex[:16]
        run_dir = f"{self._settings.resolved_jobs_dir.rstrip('/')}/{job_id}"
        row = JobRow(job_id, run_dir, datetime.now(timezone.utc), spec)
        await asyncio.to_thread(_insert, db, row)
        # A run directory on object storage has no local study.db: the study goes to our DB.
        remote = "://" in run_dir and not self._settings.is_sqlite
        storage = self._settings.resolved_database_url if remote else None
        await asyncio.to_thread(
            start_job,
            job_id,
            spec.model_copy(update={"storage_url": storage}),
            run_dir=run_dir,
            allow_custom=allow,
            num_cpus=self._settings.job_num_cpus,
        )
        logger.info("job %s started (run directory %s)", job_id, run_dir)
        return JobStatus(
            phase="queued", job_id=job_id, run_dir=run_dir, created_at=row.created_at.timestamp()
        )

    async def status(self, job_id: str) -> JobStatus:
        """The job's status (from its actor while it lives, else from its run directory).

        Raises:
            NotFoundError: no such job.
        """
        row = await self._row(job_id)
        handle = await asyncio.to_thread(get_job_actor, job_id)
        if handle is not None:
            try:
                status: JobStatus = await handle.status.remote()
                return status
            except RayActorError:
                logger.debug("job %s: its actor exited; reading the run directory", job_id)
        return await self._status_from_files(row)

    async def list_jobs(self, limit: int) -> list[JobStatus]:
        """Statuses of the ``limit`` newest jobs, newest first."""
        db = await self._database()
        rows = await asyncio.to_thread(_recent, db, limit)
        return list(await asyncio.gather(*(self.status(r.job_id) for r in rows)))

    async def events(self, job_id: str, after: int) -> AsyncIterator[str]:
        """The job's events from ``after`` on as SSE frames, ending with an ``end`` frame.

        Raises:
            NotFoundError: no such job (raised before the stream starts).
        """
        row = await self._row(job_id)
        return self._stream(row, after)

    async def _stream(self, row: JobRow, after: int) -> AsyncIterator[str]:
        seq = max(after, 0)
        handle = await asyncio.to_thread(get_job_actor, row.job_id)
        while handle is not None:
            try:
                batch = await handle.events.remote(seq, _EVENT_POLL_S)
            except RayActorError:
                break  # it exited between two polls: the run directory has the rest
            for event in batch.events:
                yield _frame(event.kind, event.model_dump_json(), event_id=event.seq)
                seq = event.seq + 1
            if batch.status.terminal:
                yield _frame("end", batch.status.model_dump_json())
                return
            if not batch.events:
                yield ": keep-alive\n\n"
        for event in await asyncio.to_thread(read_events, row.run_dir, seq):
            yield _frame(event.kind, event.model_dump_json(), event_id=event.seq)
        status = await self._status_from_files(row)
        yield _frame("end", status.model_dump_json())

    async def result(self, job_id: str) -> JobResult:
        """The best program of a finished or cancelled job.

        Raises:
            NotFoundError: no such job.
            ConflictError: the job still runs, or failed without a result.
        """
        status = await self.status(job_id)
        if not status.terminal:
            raise ConflictError(
                f"job {job_id} is {status.phase}; its result is ready when it ends "
                f"(GET /mipro/jobs/{job_id} or /events)"
            )
        if status.phase == "failed":
            raise ConflictError(f"job {job_id} failed and has no result: {status.error}")
        try:
            return await asyncio.to_thread(read_result, status)
        except StorageError as exc:
            raise ConflictError(f"job {job_id} is {status.phase} without a result: {exc}") from exc

    async def cancel(self, job_id: str, wait_s: float) -> JobStatus:
        """Cancels the job and waits up to ``wait_s`` for it to stop; keeps what finished.

        Raises:
            NotFoundError: no such job.
        """
        row = await self._row(job_id)
        handle = await asyncio.to_thread(get_job_actor, job_id)
        if handle is not None:
            try:
                await handle.cancel.remote()
                status: JobStatus = await handle.wait.remote(wait_s)
                return status
            except RayActorError:
                logger.debug("job %s: its actor exited; reading the run directory", job_id)
        return await self._status_from_files(row)

    async def _row(self, job_id: str) -> JobRow:
        db = await self._database()
        row = await asyncio.to_thread(_get, db, job_id)
        if row is None:
            raise NotFoundError(f"no MIPRO job '{job_id}' (GET /mipro/jobs lists them)")
        return row

    async def _status_from_files(self, row: JobRow) -> JobStatus:
        status = await asyncio.to_thread(read_status, row.run_dir)
        created = row.created_at.timestamp()
        if status is None:
            if time.time() - created < _STARTUP_GRACE_S:
                return JobStatus(
                    phase="queued", job_id=row.job_id, run_dir=row.run_dir, created_at=created
                )
            return JobStatus(
                phase="failed",
                job_id=row.job_id,
                run_dir=row.run_dir,
                created_at=created,
                error="the job's actor never started (see the Ray dashboard); submit it again",
            )
        if not status.terminal:
            return status.model_copy(
                update={
                    "phase": "failed",
                    "eta_s": None,
                    "error": f"the job's actor died during {status.phase} (node lost or "
                    "killed); submit the spec again",
                }
            )
        return status


def mipro_jobs_router(settings: Settings) -> APIRouter:
    """The ``/mipro/jobs`` routes over one `MiproJobService`."""
    service = MiproJobService(settings)
    router = APIRouter(prefix="/mipro/jobs", tags=["MIPRO jobs"])

    @router.post("", response_model=JobStatus, status_code=202)
    async def create_job(spec: RunSpec, _: Annotated[None, Depends(_refuse_secrets)]) -> JobStatus:
        """Starts a MIPRO run on the cluster; answers at once with the queued job."""
        return await service.create(spec)

    @router.get("", response_model=list[JobStatus])
    async def list_jobs(limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[JobStatus]:
        """The newest jobs first."""
        return await service.list_jobs(limit)

    @router.get("/{job_id}", response_model=JobStatus)
    async def get_job(job_id: str) -> JobStatus:
        """Phase, trials done/planned, best scores, LLM calls, tokens, cost, elapsed, ETA."""
        return await service.status(job_id)

    @router.get("/{job_id}/events")
    async def job_events(
        job_id: str,
        after: Annotated[int | None, Query(ge=0)] = None,
        last_event_id: Annotated[str | None, Header()] = None,
    ) -> StreamingResponse:
        """Server-Sent Events of phase changes and trial results, ending with ``end``."""
        start = after if after is not None else _after_last(last_event_id)
        frames = await service.events(job_id, start)
        return StreamingResponse(
            frames,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @router.get("/{job_id}/result", response_model=JobResult)
    async def job_result(job_id: str) -> JobResult:
        """The best program and its Ax export; 409 while the job runs."""
        return await service.result(job_id)

    @router.delete("/{job_id}", response_model=JobStatus)
    async def cancel_job(
        job_id: str, wait: Annotated[float, Query(ge=0, le=120)] = 30.0
    ) -> JobStatus:
        """Cancels the job (running trials and LM calls stop); keeps what finished."""
        return await service.cancel(job_id, wait)

    return router


async def _refuse_secrets(request: Request) -> None:
    """Refuses bodies holding literal credentials before anything parses, stores or logs them.

    Runs before the body is validated, so even a validation error cannot echo a key.
    """
    try:
        body: JsonValue = json.loads(await request.body())
    except ValueError:
        return  # not JSON: body validation answers 422 without echoing it
    paths = find_secrets(body)
    if paths:
        raise ConfigError(
            f"{', '.join(paths)}: looks like a literal API key or credential; jobs take keys "
            "only from environment variables on the cluster: set api_key_env to the variable's "
            "name (the value was not stored)"
        )


def _check_server_fields(spec: RunSpec) -> None:
    for name in ("run_dir", "storage_url"):
        if getattr(spec, name) is not None:
            raise ConfigError(
                f"{name}: chosen by the server for HTTP jobs (each job gets its own run "
                "directory); remove it"
            )


def _after_last(last_event_id: str | None) -> int:
    if last_event_id is not None and last_event_id.strip().isdigit():
        return int(last_event_id) + 1
    return 0


def _frame(event: str, data: str, *, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {data}\n\n"


# -- the job records -----------------------------------------------------------------------------


def _create_table(db: Database) -> None:
    try:
        _metadata.create_all(db.engine)
    except SQLAlchemyError as exc:
        raise StorageError(f"cannot create the MIPRO jobs table: {exc}") from exc


def _insert(db: Database, row: JobRow) -> None:
    values = {
        "job_id": row.job_id,
        "run_dir": row.run_dir,
        "created_at": row.created_at.astimezone(timezone.utc).replace(tzinfo=None),
        "spec_json": row.spec.model_dump_json(),
    }
    try:
        with db.engine.begin() as conn:
            conn.execute(insert(run_jobs_table).values(**values))
    except SQLAlchemyError as exc:
        raise StorageError(f"cannot record job {row.job_id}: {exc}") from exc


def _get(db: Database, job_id: str) -> JobRow | None:
    rows = _select(db, select(run_jobs_table).where(run_jobs_table.c.job_id == job_id))
    return rows[0] if rows else None


def _recent(db: Database, limit: int) -> list[JobRow]:
    query = select(run_jobs_table).order_by(run_jobs_table.c.created_at.desc()).limit(limit)
    return _select(db, query)


def _select(db: Database, query: Any) -> list[JobRow]:
    try:
        with db.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
    except SQLAlchemyError as exc:
        raise StorageError(f"cannot read MIPRO jobs: {exc}") from exc
    return [
        JobRow(
            job_id=str(r["job_id"]),
            run_dir=str(r["run_dir"]),
            created_at=r["created_at"].replace(tzinfo=timezone.utc),
            spec=RunSpec.model_validate_json(str(r["spec_json"])),
        )
        for r in rows
    ]
