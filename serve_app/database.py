"""The database: Optuna's RDB schema for studies and trials, plus the jobs table.

Studies and trials live in Optuna's own tables (created by :class:`optuna.storages.RDBStorage`),
so ``optuna.load_study(storage=url)`` and optuna-dashboard read exactly what the service wrote.
The hot path does not go through ``RDBStorage``'s per-field methods (about 20 ms per new trial
on SQLite, 40 ms on PostgreSQL, because each parameter is checked and written separately): the
study actor, the only writer of its study, writes each state change in **one transaction**
through Optuna's ORM models (:meth:`Database.insert_trial`, :meth:`Database.finish_trials`).
That couples this module to Optuna's schema, which Optuna versions and checks on connect; the
contract test in ``tests/serve_app/test_database.py`` reloads what was written through Optuna.

SQLite runs in WAL mode with ``synchronous=NORMAL`` (configurable): a committed transaction
survives a killed process.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, distribution_to_json
from optuna.storages import RDBStorage
from optuna.storages._rdb import models as optuna_models
from optuna.trial import TrialState
from sqlalchemy import Table, event, func, insert, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from mipro_ray.errors import StorageError
from serve_app.settings import Settings

logger = logging.getLogger(__name__)

FAIL_REASON_KEY = "fail_reason"
"""Trial system attribute holding why the service marked a trial FAIL."""


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class TrialEnd:
    """A state change that finishes a trial, written in one transaction.

    Attributes:
        trial_id: Database id of the trial.
        state: COMPLETE, PRUNED or FAIL.
        value: Objective value (None for FAIL, or PRUNED without intermediate values).
        intermediate_values: Steps reported with the final value.
        fail_reason: Why the service failed the trial, for FAIL.
    """

    trial_id: int
    state: TrialState
    value: float | None
    intermediate_values: Mapping[int, float]
    fail_reason: str | None = None


class Database:
    """One process's connection to the study + job database.

    Use :func:`connect` to share one instance per URL within a process.
    """

    def __init__(self, settings: Settings) -> None:
        url = settings.resolved_database_url
        engine_kwargs: dict[str, Any] = {}
        if settings.is_sqlite:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            engine_kwargs["connect_args"] = {"timeout": 30}
        else:
            engine_kwargs["pool_pre_ping"] = True
        try:
            self.storage = RDBStorage(url, engine_kwargs=engine_kwargs)
        except (SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
            raise StorageError(f"cannot open the study database: {exc}") from exc
        self.engine: Engine = self.storage.engine
        if settings.is_sqlite:
            _use_wal(self.engine, settings.sqlite_synchronous)
        from serve_app.jobs import create_jobs_table

        create_jobs_table(self.engine)

    def study_id(self, study_name: str) -> int | None:
        """The id of ``study_name``, or None when there is no such study."""
        with Session(self.engine) as session:
            row = session.execute(
                select(optuna_models.StudyModel.study_id).where(
                    optuna_models.StudyModel.study_name == study_name
                )
            ).first()
        return None if row is None else int(row[0])

    def insert_trial(
        self,
        *,
        study_id: int,
        number: int,
        params: Mapping[str, Any],
        distributions: Mapping[str, BaseDistribution],
        datetime_start: datetime,
    ) -> int:
        """Writes a new RUNNING trial with its parameters in one transaction.

        Returns:
            The database id of the new trial.
        """
        trials = optuna_models.TrialModel.__table__
        param_rows = [
            {
                "param_name": name,
                "param_value": distributions[name].to_internal_repr(value),
                "distribution_json": distribution_to_json(distributions[name]),
            }
            for name, value in params.items()
        ]
        with _transaction(self.engine) as conn:
            result = conn.execute(
                insert(trials).values(
                    number=number,
                    study_id=study_id,
                    state=TrialState.RUNNING,
                    datetime_start=_naive_utc(datetime_start),
                )
            )
            key = result.inserted_primary_key
            assert key is not None
            trial_id = int(key[0])
            if param_rows:
                conn.execute(
                    insert(optuna_models.TrialParamModel.__table__),
                    [{"trial_id": trial_id, **row} for row in param_rows],
                )
        return trial_id

    def finish_trials(self, ends: list[TrialEnd], *, datetime_complete: datetime) -> None:
        """Writes the final state of one or more RUNNING trials in one transaction.

        Raises:
            StorageError: When the database refuses the write or a trial is no longer RUNNING
                in the database (someone else finished it).
        """
        if not ends:
            return
        trials = optuna_models.TrialModel.__table__
        complete = _naive_utc(datetime_complete)
        with _transaction(self.engine) as conn:
            for end in ends:
                updated = conn.execute(
                    trials.update()
                    .where(trials.c.trial_id == end.trial_id)
                    .where(trials.c.state == TrialState.RUNNING)
                    .values(state=end.state, datetime_complete=complete)
                )
                if updated.rowcount != 1:
                    raise StorageError(
                        f"trial id {end.trial_id} is no longer RUNNING in the database"
                    )
                for table, rows in _end_rows(end).items():
                    if rows:
                        conn.execute(insert(table), rows)

    def delete_study(self, study_id: int) -> None:
        """Deletes a study and all its trials."""
        try:
            self.storage.delete_study(study_id)
        except (SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
            raise StorageError(f"cannot delete study id {study_id}: {exc}") from exc

    def study_names(self) -> list[str]:
        """Names of every study in the database, oldest first."""
        with Session(self.engine) as session:
            rows = session.execute(
                select(optuna_models.StudyModel.study_name).order_by(
                    optuna_models.StudyModel.study_id
                )
            ).all()
        return [str(row[0]) for row in rows]

    def trial_counts(self, study_id: int) -> dict[TrialState, int]:
        """Number of trials of a study per state."""
        model = optuna_models.TrialModel
        with Session(self.engine) as session:
            rows = session.execute(
                select(model.state, func.count())
                .where(model.study_id == study_id)
                .group_by(model.state)
            ).all()
        return {TrialState(row[0]): int(row[1]) for row in rows}

    def best_complete(self, study_id: int, *, maximize: bool) -> tuple[int, float] | None:
        """(number, value) of the best COMPLETE trial with a finite value, or None."""
        trial, value = optuna_models.TrialModel, optuna_models.TrialValueModel
        order = value.value.desc() if maximize else value.value.asc()
        with Session(self.engine) as session:
            row = session.execute(
                select(trial.number, value.value)
                .join(value, value.trial_id == trial.trial_id)
                .where(trial.study_id == study_id)
                .where(trial.state == TrialState.COMPLETE)
                .where(value.objective == 0)
                .where(value.value.is_not(None))
                .order_by(order)
                .limit(1)
            ).first()
        return None if row is None else (int(row[0]), float(row[1]))


def _naive_utc(value: datetime) -> datetime:
    """Optuna's RDB schema stores naive UTC datetimes."""
    return value.astimezone(timezone.utc).replace(tzinfo=None)


def _end_rows(end: TrialEnd) -> dict[Table, list[dict[str, Any]]]:
    values: list[dict[str, Any]] = []
    if end.value is not None:
        stored, kind = optuna_models.TrialValueModel.value_to_stored_repr(end.value)
        values.append(
            {"trial_id": end.trial_id, "objective": 0, "value": stored, "value_type": kind}
        )
    inter_model = optuna_models.TrialIntermediateValueModel
    intermediate: list[dict[str, Any]] = []
    for step, inter in end.intermediate_values.items():
        stored_inter, inter_kind = inter_model.intermediate_value_to_stored_repr(inter)
        intermediate.append(
            {
                "trial_id": end.trial_id,
                "step": step,
                "intermediate_value": stored_inter,
                "intermediate_value_type": inter_kind,
            }
        )
    attrs: list[dict[str, Any]] = []
    if end.fail_reason is not None:
        attrs.append(
            {
                "trial_id": end.trial_id,
                "key": FAIL_REASON_KEY,
                "value_json": json.dumps(end.fail_reason),
            }
        )
    return {
        optuna_models.TrialValueModel.__table__: values,
        inter_model.__table__: intermediate,
        optuna_models.TrialSystemAttributeModel.__table__: attrs,
    }


@contextmanager
def _transaction(engine: Engine) -> Iterator[Connection]:
    """One write transaction; database errors become :class:`StorageError`."""
    try:
        with engine.begin() as conn:
            yield conn
    except SQLAlchemyError as exc:
        raise StorageError(f"database write failed: {exc}") from exc


def _use_wal(engine: Engine, synchronous: str) -> None:
    """Puts SQLite in WAL mode and sets ``synchronous`` on every connection."""

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, connection_record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.close()

    # Connections opened by RDBStorage's schema setup predate the listener.
    engine.dispose()


_databases: dict[str, Database] = {}
_databases_lock = threading.Lock()


def connect(settings: Settings) -> Database:
    """The process-wide :class:`Database` for ``settings``' URL (created on first use)."""
    key = settings.resolved_database_url
    with _databases_lock:
        database = _databases.get(key)
        if database is None:
            database = Database(settings)
            _databases[key] = database
        return database
