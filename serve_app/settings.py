"""Operator settings of the Serve app, read from ``MIPRO_RAY_*`` environment variables.

Settings are read through :func:`get_settings` (cached), never at import time, so importing
``serve_app`` has no side effects. The process that builds the Serve application reads them
once and hands them to the replicas as a constructor argument, so every replica uses the same
database and token regardless of the environment of the Ray worker it lands on.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every operator-tunable knob of the Serve app.

    Attributes:
        data_dir: Directory for the default SQLite database.
        database_url: SQLAlchemy URL of the study + job database. Defaults to a SQLite file in
            ``data_dir``; use a PostgreSQL URL (``postgresql+psycopg://...``) for several
            replicas or nodes.
        auth_token: Optional bearer token. When set, every endpoint but ``/health`` needs
            ``Authorization: Bearer <token>``.
        stale_trial_seconds: A suggested trial not evaluated within this time is marked FAIL.
        max_body_bytes: Largest accepted request body; larger bodies get 413.
        num_replicas: Fixed number of ingress replicas (ignored when autoscaling is on).
        autoscaling_min_replicas: Enables autoscaling together with ``autoscaling_max_replicas``.
        autoscaling_max_replicas: Upper bound of replicas when autoscaling.
        max_ongoing_requests: Concurrent requests one replica accepts.
        actor_namespace: Ray namespace of the study host actors.
        study_hosts: Number of study host actors; studies are sharded over them by name.
            Changing it starts a new set of hosts (stop the old deployment first).
        study_host_threads: Calls one host runs at once (on different studies).
        host_restart_wait_seconds: How long a request waits for a crashed study host to come
            back before answering 503.
        study_idle_seconds: A study with no call for this long is dropped from its host's
            memory (the database has it; the next call reloads it).
        sqlite_synchronous: SQLite ``PRAGMA synchronous`` (``NORMAL`` in WAL mode survives a
            killed process; ``FULL`` also survives power loss).
        jobs_dir: Where MIPRO jobs (``POST /mipro/jobs``) write their run directories: a path
            every node sees (shared filesystem) or a pyarrow URI; default ``<data_dir>/runs``.
        allow_custom_code: Let job specs name user code (``class_path`` programs,
            ``module:function`` metrics); off by default because it runs arbitrary code.
        job_num_cpus: CPUs reserved by each job's driver actor (its trials reserve their own).
    """

    model_config = SettingsConfigDict(env_prefix="MIPRO_RAY_", extra="ignore", frozen=True)

    data_dir: Path = Path("./mipro_ray_data")
    database_url: str | None = None
    auth_token: SecretStr | None = None
    stale_trial_seconds: float = Field(default=600.0, gt=0)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    num_replicas: int = Field(default=1, ge=1)
    autoscaling_min_replicas: int | None = Field(default=None, ge=0)
    autoscaling_max_replicas: int | None = Field(default=None, ge=1)
    max_ongoing_requests: int = Field(default=64, ge=1)
    actor_namespace: str = "mipro_ray_serve"
    study_hosts: int = Field(default=2, ge=1, le=256)
    study_host_threads: int = Field(default=8, ge=1)
    host_restart_wait_seconds: float = Field(default=20.0, ge=0)
    study_idle_seconds: float = Field(default=3600.0, gt=0)
    sqlite_synchronous: str = Field(default="NORMAL", pattern="^(OFF|NORMAL|FULL|EXTRA)$")
    jobs_dir: str | None = None
    allow_custom_code: bool = False
    job_num_cpus: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _check_autoscaling(self) -> Settings:
        low, high = self.autoscaling_min_replicas, self.autoscaling_max_replicas
        if (low is None) != (high is None):
            raise ValueError(
                "set both MIPRO_RAY_AUTOSCALING_MIN_REPLICAS and "
                "MIPRO_RAY_AUTOSCALING_MAX_REPLICAS, or neither"
            )
        if low is not None and high is not None and low > high:
            raise ValueError(f"autoscaling_min_replicas {low} > autoscaling_max_replicas {high}")
        return self

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to ``<data_dir>/mipro_ray.db`` (absolute path)."""
        if self.database_url is not None:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'mipro_ray.db').resolve()}"

    @property
    def resolved_jobs_dir(self) -> str:
        """Where job run directories go (``jobs_dir``, default ``<data_dir>/runs``, absolute)."""
        if self.jobs_dir is not None:
            return self.jobs_dir
        return str((self.data_dir / "runs").resolve())

    @property
    def is_sqlite(self) -> bool:
        """Whether the database is a SQLite file (single node only)."""
        return self.resolved_database_url.startswith("sqlite")

    @property
    def database_key(self) -> str:
        """A short stable id of the database, used to name study actors per database."""
        return hashlib.sha256(self.resolved_database_url.encode()).hexdigest()[:10]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Reads the settings from the environment once per process."""
    return Settings()
