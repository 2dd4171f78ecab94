"""Job records: one per study created by ``POST /optimize``, in the study database.

A job tracks the client's progress through its study; the service never runs trials itself.
Status moves ``pending`` -> ``running`` (first suggest) -> one of the final statuses:

- ``completed``: ``n_trials`` were told (before the timeout, if the request has one);
- ``failed``: the request's ``timeout``, counted from the first suggest, elapsed first
  (see :attr:`JobRecord.deadline`); ``error`` says after how many trials;
- ``cancelled``: ``DELETE /jobs/{id}``, or the study was deleted first.

A final status never changes afterwards (:func:`with_status` refuses, and so does
:meth:`JobStore.update` against the database row). Only the study's actor changes a job's
status, so status checks on the suggest path need no database read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone

from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    insert,
    or_,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from mipro_ray.errors import StorageError
from serve_app.errors import ConflictError
from serve_app.models import JobStatus, OptimizationRequest, Progress

_metadata = MetaData()

jobs_table = Table(
    "mipro_ray_jobs",
    _metadata,
    Column("job_id", String(64), primary_key=True),
    Column("study_name", String(512), nullable=False, unique=True),
    Column("status", String(16), nullable=False),
    Column("n_trials", Integer, nullable=False),
    Column("request_json", Text, nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("started_at", DateTime),
    Column("completed_at", DateTime),
    Column("error", Text),
    Column("progress_json", Text),
)

FINAL_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})


def create_jobs_table(engine: Engine) -> None:
    """Creates the jobs table if it does not exist."""
    try:
        _metadata.create_all(engine)
    except SQLAlchemyError as exc:
        raise StorageError(f"cannot create the jobs table: {exc}") from exc


@dataclass(frozen=True)
class JobRecord:
    """One row of the jobs table (timestamps are aware UTC).

    Attributes:
        progress: Last progress snapshot, kept for when the study has been deleted.
    """

    job_id: str
    study_name: str
    status: JobStatus
    n_trials: int
    request: OptimizationRequest
    created_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None
    error: str | None = None
    progress: Progress | None = None

    @property
    def deadline(self) -> datetime | None:
        """When the request's ``timeout`` elapses: ``started_at + timeout``.

        None without a timeout, or while the job is pending: the clock starts at the first
        suggest, so the time between ``POST /optimize`` and the client's first trial does not
        count.
        """
        timeout = self.request.timeout
        if timeout is None or self.started_at is None:
            return None
        return self.started_at + timedelta(seconds=timeout)


def _to_db(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(timezone.utc).replace(tzinfo=None)


def _from_db(value: datetime | None) -> datetime | None:
    return None if value is None else value.replace(tzinfo=timezone.utc)


class JobStore:
    """Reads and writes job records."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def insert(self, job: JobRecord) -> None:
        """Adds a new job.

        Raises:
            ConflictError: When the study already has a job.
        """
        try:
            with self._engine.begin() as conn:
                conn.execute(
                    insert(jobs_table).values(
                        job_id=job.job_id,
                        study_name=job.study_name,
                        status=job.status.value,
                        n_trials=job.n_trials,
                        request_json=job.request.model_dump_json(),
                        created_at=_to_db(job.created_at),
                    )
                )
        except IntegrityError as exc:
            raise ConflictError(f"study '{job.study_name}' already has a job") from exc
        except SQLAlchemyError as exc:
            raise StorageError(f"cannot record job {job.job_id}: {exc}") from exc

    def update(self, job: JobRecord) -> None:
        """Writes a job's status, timestamps, error and progress snapshot.

        Raises:
            ConflictError: The stored job already has a different final status (its status
                never changes once final; e.g. a stale copy tried to move a cancelled job).
        """
        final = [status.value for status in FINAL_STATUSES]
        values = {
            "status": job.status.value,
            "started_at": _to_db(job.started_at),
            "completed_at": _to_db(job.completed_at),
            "error": job.error,
            "progress_json": None if job.progress is None else job.progress.model_dump_json(),
        }
        try:
            with self._engine.begin() as conn:
                updated = conn.execute(
                    jobs_table.update()
                    .where(jobs_table.c.job_id == job.job_id)
                    .where(
                        or_(
                            jobs_table.c.status.not_in(final),
                            jobs_table.c.status == job.status.value,
                        )
                    )
                    .values(**values)
                )
        except SQLAlchemyError as exc:
            raise StorageError(f"cannot update job {job.job_id}: {exc}") from exc
        if updated.rowcount != 1:
            raise ConflictError(
                f"job {job.job_id} has already finished with another status in the database, "
                f"so it cannot become {job.status.value}; retry to see its current status"
            )

    def get(self, job_id: str) -> JobRecord | None:
        """The job with ``job_id``, or None."""
        return self._one(jobs_table.c.job_id == job_id)

    def for_study(self, study_name: str) -> JobRecord | None:
        """The job of ``study_name``, or None when the study has no job."""
        return self._one(jobs_table.c.study_name == study_name)

    def recent(self, limit: int) -> list[JobRecord]:
        """Up to ``limit`` jobs, newest first."""
        query = select(jobs_table).order_by(jobs_table.c.created_at.desc()).limit(limit)
        try:
            with self._engine.connect() as conn:
                rows = conn.execute(query).mappings().all()
        except SQLAlchemyError as exc:
            raise StorageError(f"cannot list jobs: {exc}") from exc
        return [_record(dict(row)) for row in rows]

    def _one(self, condition: object) -> JobRecord | None:
        try:
            with self._engine.connect() as conn:
                row = conn.execute(select(jobs_table).where(condition)).mappings().first()  # type: ignore[arg-type]
        except SQLAlchemyError as exc:
            raise StorageError(f"cannot read jobs: {exc}") from exc
        return None if row is None else _record(dict(row))


def _record(row: dict[str, object]) -> JobRecord:
    progress = row["progress_json"]
    return JobRecord(
        job_id=str(row["job_id"]),
        study_name=str(row["study_name"]),
        status=JobStatus(row["status"]),
        n_trials=int(str(row["n_trials"])),
        request=OptimizationRequest.model_validate_json(str(row["request_json"])),
        created_at=_from_db(row["created_at"]),  # type: ignore[arg-type]
        started_at=_from_db(row["started_at"]),  # type: ignore[arg-type]
        completed_at=_from_db(row["completed_at"]),  # type: ignore[arg-type]
        error=None if row["error"] is None else str(row["error"]),
        progress=None if progress is None else Progress.model_validate(json.loads(str(progress))),
    )


def with_status(job: JobRecord, status: JobStatus, *, error: str | None = None) -> JobRecord:
    """A copy of ``job`` moved to ``status``, stamping started_at/completed_at.

    Raises:
        ConflictError: ``job`` already has a final status other than ``status``.
    """
    if job.status in FINAL_STATUSES and status is not job.status:
        because = f": {job.error}" if job.error is not None else ""
        raise ConflictError(f"job {job.job_id} is already {job.status.value}{because}")
    now = datetime.now(timezone.utc)
    started = job.started_at
    if started is None and status in (JobStatus.RUNNING, JobStatus.COMPLETED):
        started = now
    completed = now if status in FINAL_STATUSES else None
    return replace(
        job,
        status=status,
        started_at=started,
        completed_at=completed,
        error=error if error is not None else job.error,
    )
