"""On-disk LM response cache: one SQLite file keyed by a hash of the full request.

Several processes (Ray actors on one node) may share the file: it runs in WAL mode with a
busy timeout, and writes are single ``INSERT OR REPLACE`` statements. The cache is an
optimisation, never a reason to fail a run: if the file cannot be opened, read or written,
the cache logs one warning naming the path and the reason and turns itself off.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mipro_ray.lm import LMConfig, LMRequest, LMResponse

__all__ = ["CACHE_FILE_NAME", "ResponseCache", "default_cache_dir"]

logger = logging.getLogger(__name__)

CACHE_FILE_NAME = "responses.sqlite3"
_KEY_VERSION = 1
_BUSY_TIMEOUT_MS = 10_000


def default_cache_dir(cache_dir: str | None) -> Path:
    """Resolves the cache directory: ``cache_dir``, else ``$MIPRO_RAY_CACHE_DIR``, else
    ``~/.cache/mipro-ray``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("MIPRO_RAY_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "mipro-ray"


class ResponseCache:
    """A process- and thread-safe response cache in one SQLite file.

    The file and its directory are created on first use, not in the constructor.

    Args:
        path: The SQLite file.
    """

    def __init__(self, *, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._disabled_reason: str | None = None
        self._warned_busy = False

    def __repr__(self) -> str:
        state = "disabled" if self._disabled_reason is not None else "enabled"
        return f"ResponseCache(path={str(self.path)!r}, {state})"

    @property
    def enabled(self) -> bool:
        """False once the cache turned itself off after an error."""
        return self._disabled_reason is None

    @staticmethod
    def key_for(config: LMConfig, request: LMRequest, *, sent_format: bool) -> str:
        """Hashes everything that determines the answer of one request.

        Args:
            config: Supplies the model and base URL.
            request: The request; its ``rollout_id`` is part of the key.
            sent_format: Whether ``response_format`` is actually sent (it is left out of the
                key when it is not, since it then cannot change the answer).

        Returns:
            A hex sha256 digest of the canonical JSON of the request.
        """
        payload = {
            "v": _KEY_VERSION,
            "model": config.model,
            "base_url": config.base_url,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "temperature": request.temperature,
            "top_p": request.top_p,
            "max_tokens": request.max_tokens,
            "response_format": request.response_format if sent_format else None,
            "rollout_id": request.rollout_id,
        }
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def get(self, key: str) -> LMResponse | None:
        """Returns the stored response for ``key``, or None (also when the cache is off)."""
        # Imported here: lm imports this module, so a top-level import would be circular.
        from mipro_ray.lm import LMResponse

        with self._lock:
            conn = self._connect()
            if conn is None:
                return None
            try:
                row = conn.execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
            except sqlite3.Error as exc:
                self._disable(f"read failed: {exc}")
                return None
        if row is None:
            return None
        try:
            return LMResponse.model_validate_json(row[0])
        except ValueError as exc:
            logger.warning("LM cache %s: ignoring an unreadable entry (%s)", self.path, exc)
            return None

    def put(self, key: str, response: LMResponse) -> None:
        """Stores ``response`` under ``key`` (a no-op when the cache is off)."""
        value = response.model_dump_json()
        with self._lock:
            conn = self._connect()
            if conn is None:
                return
            try:
                with conn:
                    conn.execute(
                        "INSERT OR REPLACE INTO responses (key, value, created) VALUES (?, ?, ?)",
                        (key, value, time.time()),
                    )
            except sqlite3.OperationalError as exc:
                if _is_busy(exc):
                    self._skip_busy(exc)
                else:
                    self._disable(f"write failed: {exc}")
            except sqlite3.Error as exc:
                self._disable(f"write failed: {exc}")

    def close(self) -> None:
        """Closes the connection; a later `get`/`put` reopens it."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _connect(self) -> sqlite3.Connection | None:
        """Opens the file on first use; None if the cache is (or just became) disabled."""
        if self._disabled_reason is not None:
            return None
        if self._conn is not None:
            return self._conn
        conn: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, timeout=_BUSY_TIMEOUT_MS / 1000, check_same_thread=False
            )
            conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            with conn:
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS responses ("
                    " key TEXT PRIMARY KEY,"
                    " value TEXT NOT NULL,"
                    " created REAL NOT NULL)"
                )
            conn.execute("SELECT 1 FROM responses LIMIT 1").fetchall()
        except (OSError, sqlite3.Error) as exc:
            if conn is not None:
                conn.close()
            self._disable(f"cannot open: {exc}")
            return None
        self._conn = conn
        return conn

    def _disable(self, reason: str) -> None:
        if self._disabled_reason is None:
            logger.warning(
                "LM response cache %s is unusable (%s); continuing without caching",
                self.path,
                reason,
            )
        self._disabled_reason = reason
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _skip_busy(self, exc: sqlite3.OperationalError) -> None:
        level = logging.DEBUG if self._warned_busy else logging.WARNING
        self._warned_busy = True
        logger.log(level, "LM response cache %s is busy (%s); entry not stored", self.path, exc)


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text
