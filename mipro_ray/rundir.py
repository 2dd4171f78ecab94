"""The run directory: everything a run produces, and what a restarted run resumes from.

A run directory is a local path or any pyarrow filesystem URI (``s3://bucket/runs/x``). It holds:

| file | content |
|---|---|
| ``config.json`` | the run's settings and LM configs (never API keys) |
| ``candidates.json`` | demo sets and instruction candidates (with proposer failures) |
| ``trials.parquet`` | one row per finished trial (rewritten after every trial) |
| ``best_program.json`` | the best program's state (`mipro_ray.load_program` reads it) |
| ``best_program.ax.json`` | the same, in the shape Ax programs apply |
| ``usage.json`` | LM usage by phase and in total |
| ``result.json`` | scores, stop reason, timings |
| ``study.db`` | the Optuna study (SQLite), unless a storage URL is given |

Files are written whole (local files atomically through a rename), so a run killed at any
moment leaves every file either old or new, never torn.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pa_fs
import pyarrow.parquet as pq

from mipro_ray.errors import StorageError
from mipro_ray.search import TrialRecord


class RunDir:
    """A run directory on a local path or a pyarrow filesystem URI."""

    def __init__(self, location: str | os.PathLike[str]) -> None:
        """Opens (creating if needed) the directory.

        Raises:
            StorageError: the location cannot be used.
        """
        text = str(location)
        self.location = text
        try:
            if "://" in text:
                self._fs, self._root = pa_fs.FileSystem.from_uri(text)
                self.local_path: Path | None = (
                    Path(self._root) if isinstance(self._fs, pa_fs.LocalFileSystem) else None
                )
            else:
                self._fs, self._root = pa_fs.LocalFileSystem(), str(Path(text).resolve())
                self.local_path = Path(self._root)
            self._fs.create_dir(self._root, recursive=True)
        except (OSError, pa.ArrowException) as exc:
            raise StorageError(f"cannot use run directory '{text}': {exc}") from exc

    def _path(self, name: str) -> str:
        return f"{self._root.rstrip('/')}/{name}"

    def exists(self, name: str) -> bool:
        """Whether ``name`` exists in the directory."""
        info = self._fs.get_file_info(self._path(name))
        return bool(info.type == pa_fs.FileType.File)

    def write_bytes(self, name: str, data: bytes) -> None:
        """Writes a whole file (atomically on local disks)."""
        try:
            if self.local_path is not None:
                target = self.local_path / name
                tmp = target.with_name(f".{target.name}.tmp")
                tmp.write_bytes(data)
                os.replace(tmp, target)
            else:
                with self._fs.open_output_stream(self._path(name)) as out:
                    out.write(data)
        except (OSError, pa.ArrowException) as exc:
            raise StorageError(
                f"cannot write {name} in run directory '{self.location}': {exc}"
            ) from exc

    def read_bytes(self, name: str) -> bytes | None:
        """Reads a whole file, or None if it does not exist."""
        if not self.exists(name):
            return None
        try:
            with self._fs.open_input_stream(self._path(name)) as src:
                data: bytes = src.read()
            return data
        except (OSError, pa.ArrowException) as exc:
            raise StorageError(
                f"cannot read {name} in run directory '{self.location}': {exc}"
            ) from exc

    def write_json(self, name: str, value: object) -> None:
        """Writes JSON (pretty-printed)."""
        self.write_bytes(name, json.dumps(value, indent=2, sort_keys=False).encode())

    def read_json(self, name: str) -> object | None:
        """Reads JSON, or None if the file does not exist."""
        data = self.read_bytes(name)
        if data is None:
            return None
        try:
            loaded: object = json.loads(data)
        except ValueError as exc:
            raise StorageError(f"{name} in '{self.location}' is not valid JSON: {exc}") from exc
        return loaded

    def write_trials(self, records: list[TrialRecord]) -> None:
        """Rewrites ``trials.parquet`` (params as a JSON string column)."""
        rows = []
        for r in records:
            row = r.model_dump()
            row["params"] = json.dumps(r.params, sort_keys=True)
            rows.append(row)
        table = pa.Table.from_pylist(rows, schema=_TRIALS_SCHEMA)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        self.write_bytes("trials.parquet", sink.getvalue().to_pybytes())

    def read_trials(self) -> list[TrialRecord]:
        """Reads ``trials.parquet`` (empty if absent)."""
        data = self.read_bytes("trials.parquet")
        if data is None:
            return []
        try:
            rows = pq.read_table(pa.BufferReader(data)).to_pylist()
        except pa.ArrowException as exc:
            raise StorageError(f"trials.parquet in '{self.location}' is unreadable: {exc}") from exc
        records = []
        for row in rows:
            row["params"] = json.loads(row["params"])
            records.append(TrialRecord.model_validate(row))
        return records

    def sqlite_url(self, name: str = "study.db") -> str | None:
        """A SQLAlchemy SQLite URL for a file in a local run directory (None for remote ones)."""
        if self.local_path is None:
            return None
        return f"sqlite:///{self.local_path / name}"


_TRIALS_SCHEMA = pa.schema(
    [
        ("number", pa.int64()),
        ("kind", pa.string()),
        ("params", pa.string()),
        ("score", pa.float64()),
        ("state", pa.string()),
        ("error", pa.string()),
        ("n_examples", pa.int64()),
        ("calls", pa.int64()),
        ("cache_hits", pa.int64()),
        ("http_requests", pa.int64()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("cost_usd", pa.float64()),
        ("duration_s", pa.float64()),
        ("finished_at", pa.float64()),
    ]
)
