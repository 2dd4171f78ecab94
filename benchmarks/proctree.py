"""CPU seconds and peak RSS of a process and all its descendants, sampled from ``/proc``.

A local Ray cluster started by ``ray.init`` runs as descendants of the driver (GCS, raylet,
dashboard, workers), so sampling the driver's process tree measures "all Ray processes".
Linux-only and stdlib-only (no psutil in the library venv). A process that exits between two
samples loses the CPU time it used since the last sample; keep ``interval_s`` short.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from types import TracebackType

from typing_extensions import Self

__all__ = ["ProcessTreeSampler"]

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat(pid: int) -> tuple[int, float, int] | None:
    """(parent pid, CPU seconds, RSS bytes) of ``pid``, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the ")" closing the command name: state ppid ... utime(12) stime(13) ...
    fields = raw[raw.rindex(")") + 2 :].split()
    ppid = int(fields[1])
    cpu = (int(fields[11]) + int(fields[12])) / _TICKS
    rss = int(fields[21]) * _PAGE
    return ppid, cpu, rss


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:  # the process ended
        return ""


class ProcessTreeSampler:
    """Samples the tree rooted at ``root_pid`` (default: this process) in a background thread.

    Subtrees rooted at ``exclude_pids`` (e.g. a simulated LLM started as a child) are skipped.
    Processes whose command line contains ``include_cmdline`` (e.g. an already running Ray
    cluster's temp dir) are roots too, with their subtrees; their CPU is counted from the start.

    Attributes:
        peak_rss_mb: Largest sum of RSS over the tree seen in one sample.
        cpu_s: CPU seconds (user + system) of every process seen, as of its last sample;
            for the root, CPU used since the sampler started.
    """

    def __init__(
        self,
        *,
        root_pid: int | None = None,
        exclude_pids: frozenset[int] = frozenset(),
        include_cmdline: str | None = None,
        interval_s: float = 0.25,
    ) -> None:
        self._root = root_pid if root_pid is not None else os.getpid()
        self._include = include_cmdline
        self._exclude = exclude_pids
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cpu_at_start: dict[int, float] = {}
        self._cpu_last: dict[int, float] = {}
        self.peak_rss_mb = 0.0

    @property
    def cpu_s(self) -> float:
        """CPU seconds of the tree during the sampling window."""
        return sum(cpu - self._cpu_at_start.get(pid, 0.0) for pid, cpu in self._cpu_last.items())

    def _sample(self) -> None:
        parents: dict[int, int] = {}
        stats: dict[int, tuple[float, int]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            got = _stat(int(entry.name))
            if got is not None:
                parents[int(entry.name)] = got[0]
                stats[int(entry.name)] = (got[1], got[2])
        tree = {self._root}
        if self._include is not None:
            tree |= {pid for pid in parents if self._include in _cmdline(pid)}
        grew = True
        while grew:
            grew = False
            for pid, ppid in parents.items():
                if ppid in tree and pid not in tree and pid not in self._exclude:
                    tree.add(pid)
                    grew = True
        rss = sum(stats[pid][1] for pid in tree if pid in stats)
        self.peak_rss_mb = max(self.peak_rss_mb, rss / 2**20)
        for pid in tree:
            if pid in stats:
                self._cpu_last[pid] = stats[pid][0]

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def __enter__(self) -> Self:
        self._sample()
        self._cpu_at_start = dict(self._cpu_last)  # what ran before the window is not counted
        self._thread = threading.Thread(target=self._loop, name="proctree", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
