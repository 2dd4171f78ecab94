"""Per-call timeline of the simulated LLM and the statistics of a time window.

Phases are attributed by request kind and time, whatever the order a system chooses:
non-task calls (dataset summary, program description, instruction proposal) are ``propose``;
task calls that start before the last non-task call ends are ``bootstrap`` (proposals need
the demo sets, so bootstrapping happens before or alongside them); later task calls are
``search``. Stdlib-only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["CallRecord", "window_stats"]

TASK_KIND = "task"


@dataclass(frozen=True)
class CallRecord:
    """One answered LLM call as the server saw it.

    Attributes:
        start: Arrival time (server monotonic clock, seconds).
        end: Time the answer was produced.
        kind: Request kind (``"task"``, ``"propose_instruction"``, ...).
        dialect: Prompt dialect that read it (``"dspy"``, ``"mipro_ray"``, ``"plain"``).
    """

    start: float
    end: float
    kind: str
    dialect: str


def _peak(records: Sequence[CallRecord], t0: float, t1: float) -> int:
    # At equal times an end sorts before a start, so back-to-back calls do not overlap.
    events = sorted(
        [(max(r.start, t0), 1) for r in records] + [(min(r.end, t1), -1) for r in records]
    )
    current = peak = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak


def window_stats(records: Sequence[CallRecord], t0: float, t1: float) -> dict[str, object]:
    """Statistics of the calls that started within ``[t0, t1)``.

    Returns:
        ``calls``, ``by_kind``, ``by_dialect``, ``by_phase`` (bootstrap/propose/search),
        ``peak_in_flight`` and ``mean_in_flight`` (time-average of calls in flight over the
        window, counting each call from its arrival to its answer), ``window_s`` and
        ``in_flight_by_second`` (mean calls in flight in each second of the window: where the
        pipe ran empty).
    """
    inside = [r for r in records if t0 <= r.start < t1]
    window = max(t1 - t0, 1e-9)
    nontask_ends = [r.end for r in inside if r.kind != TASK_KIND]
    proposals_end = max(nontask_ends) if nontask_ends else None
    phases: Counter[str] = Counter()
    for r in inside:
        if r.kind != TASK_KIND:
            phases["propose"] += 1
        elif proposals_end is not None and r.start < proposals_end:
            phases["bootstrap"] += 1
        else:
            phases["search"] += 1
    busy = sum(max(0.0, min(r.end, t1) - max(r.start, t0)) for r in inside)
    buckets = [0.0] * max(1, int(window) + 1)
    for r in inside:  # seconds of calls in flight within each second of the window
        a, b = max(r.start, t0) - t0, min(r.end, t1) - t0
        while a < b:
            edge = min(b, int(a) + 1.0)
            buckets[min(int(a), len(buckets) - 1)] += edge - a
            a = edge
    return {
        "calls": len(inside),
        "by_kind": dict(Counter(r.kind for r in inside)),
        "by_dialect": dict(Counter(r.dialect for r in inside)),
        "by_phase": {p: phases.get(p, 0) for p in ("bootstrap", "propose", "search")},
        "peak_in_flight": _peak(inside, t0, t1),
        "mean_in_flight": busy / window,
        "window_s": window,
        "in_flight_by_second": [round(x, 1) for x in buckets],
    }
