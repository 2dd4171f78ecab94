"""Start the simulated LLM in its own process and talk to its control API. Stdlib-only.

The simulated LLM imports ``mipro_ray.testing``, so it runs under the library's interpreter
(``/work/main/.venv/bin/python`` by default, or ``$MIPRO_BENCH_SIM_PYTHON``) even when the
client under test is DSPy in its own venv. Its own process also keeps its CPU and GIL out of
the client's measurements.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from typing_extensions import Self

__all__ = ["REPO_ROOT", "SimControl", "SimEndpoint", "SimProcess", "sim_python"]

REPO_ROOT = Path(__file__).resolve().parents[1]
"""The repository root (parent of ``benchmarks/``)."""


def sim_python() -> str:
    """The interpreter that runs the simulated LLM (it needs ``mipro_ray`` installed)."""
    override = os.environ.get("MIPRO_BENCH_SIM_PYTHON")
    if override:
        return override
    venv = REPO_ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


@dataclass(frozen=True)
class SimEndpoint:
    """Where a running simulated LLM listens.

    Attributes:
        base_url: OpenAI base URL (``http://127.0.0.1:PORT/v1``).
        control_url: Control API root (``http://127.0.0.1:PORT``).
    """

    base_url: str
    control_url: str


class SimControl:
    """Client of the simulated LLM's control API."""

    def __init__(self, endpoint: SimEndpoint, *, timeout_s: float = 30.0) -> None:
        self._root = endpoint.control_url.rstrip("/")
        self._timeout = timeout_s

    def mark(self, name: str) -> None:
        """Records a named time mark on the server's clock."""
        req = urllib.request.Request(f"{self._root}/mark?name={name}", method="POST", data=b"")
        with urllib.request.urlopen(req, timeout=self._timeout) as resp:
            resp.read()

    def stats(self, start: str, end: str) -> dict[str, object]:
        """Statistics of the calls that started between marks ``start`` and ``end``."""
        url = f"{self._root}/stats?start={start}&end={end}"
        with urllib.request.urlopen(url, timeout=self._timeout) as resp:
            data: dict[str, object] = json.loads(resp.read())
        return data


class SimProcess:
    """Runs ``python -m benchmarks.simllm`` as a child process (a context manager).

    Args:
        latency_s: Latency of every answered request.
        cap: Requests in flight beyond this get HTTP 429.
        seed: The server's seed.
        python: Interpreter to use (default `sim_python`).
    """

    def __init__(
        self, *, latency_s: float, cap: int, seed: int = 0, python: str | None = None
    ) -> None:
        self._cmd = [
            python if python is not None else sim_python(),
            "-m",
            "benchmarks.simllm",
            "--latency",
            str(latency_s),
            "--cap",
            str(cap),
            "--seed",
            str(seed),
        ]
        self._proc: subprocess.Popen[str] | None = None
        self.endpoint: SimEndpoint | None = None

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs."""
        return self._proc.pid if self._proc is not None else None

    def __enter__(self) -> Self:
        self._proc = subprocess.Popen(
            self._cmd,
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            code = self._proc.wait(timeout=30)
            raise RuntimeError(f"simulated LLM exited with {code} before listening: {self._cmd}")
        data = json.loads(line)
        self.endpoint = SimEndpoint(base_url=data["base_url"], control_url=data["control_url"])
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        proc = self._proc
        if proc is None:
            return
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
