"""Study hosts: a few long-lived Ray actors that own the studies, sharded by study name.

Every study is owned by exactly one host cluster-wide: host ``k`` of ``n`` is the named,
detached actor ``mipro_studies:<database key>:<k>of<n>`` (see :func:`host_name`) and a study
goes to host ``sha256(name) % n``. Replicas find hosts by name, so they stay stateless and any
replica can serve any study. A host keeps each study it owns in memory as a
:class:`~serve_app.study_state.StudyState` (which writes every change through to the database
before answering) and serializes the calls of one study with a lock, so trial numbers are
distinct; calls on different studies run in parallel threads.

Why hosts and not one actor per study: each Ray actor is a new Python process, which takes
several seconds to start on a small machine; a study's first request would wait for it.
Idle studies are dropped from memory after ``study_idle_seconds`` (the database has them).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from typing import Any

from serve_app.errors import NotFoundError
from serve_app.settings import Settings
from serve_app.study_state import StudyState

logger = logging.getLogger(__name__)

STUDY_METHODS = frozenset({"suggest", "evaluate", "results", "progress", "cancel", "delete"})


def host_index(study_name: str, n_hosts: int) -> int:
    """The host that owns ``study_name`` (stable across processes, unlike ``hash``)."""
    digest = hashlib.sha256(study_name.encode()).digest()
    return int.from_bytes(digest[:8], "big") % n_hosts


def host_name(settings: Settings, index: int) -> str:
    """The cluster-wide actor name of host ``index`` for this database and host count."""
    return f"mipro_studies:{settings.database_key}:{index}of{settings.study_hosts}"


class StudyHost:
    """Owns the studies that hash to it; each public call names the study and the method.

    Args:
        settings: Database, stale-trial and idle settings.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._studies: dict[str, StudyState] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._last_used: dict[str, float] = {}
        self._guard = threading.Lock()

    def ready(self) -> bool:
        """Answers once the host is up (used to warm hosts at replica start)."""
        return True

    def call(self, study_name: str, method: str, *args: Any) -> Any:
        """Runs ``StudyState.<method>(*args)`` for ``study_name`` under that study's lock."""
        if method not in STUDY_METHODS:
            raise AssertionError(f"unknown study method {method!r}")
        with self._guard:
            state = self._studies.get(study_name)
            if state is None:
                state = StudyState(study_name, self._settings)
                self._studies[study_name] = state
                self._locks[study_name] = threading.Lock()
            lock = self._locks[study_name]
            self._last_used[study_name] = time.monotonic()
        with lock:
            try:
                return getattr(state, method)(*args)
            except NotFoundError:
                self._forget(study_name)
                raise
            finally:
                if method == "delete":
                    self._forget(study_name)
                self._evict_idle()

    def _forget(self, study_name: str) -> None:
        with self._guard:
            self._studies.pop(study_name, None)
            self._locks.pop(study_name, None)
            self._last_used.pop(study_name, None)

    def _evict_idle(self) -> None:
        cutoff = time.monotonic() - self._settings.study_idle_seconds
        with self._guard:
            idle = [name for name, used in self._last_used.items() if used < cutoff]
            for name in idle:
                lock = self._locks[name]
                if lock.acquire(blocking=False):
                    try:
                        del self._studies[name], self._locks[name], self._last_used[name]
                    finally:
                        lock.release()
        if idle:
            logger.info("dropped %d idle studies from memory", len(idle))
