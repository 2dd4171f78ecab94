"""Benchmark scenarios, the shared workload settings, and the one-JSON-line run record.

Stdlib-only: imported by the runners of both systems (library venv and DSPy venv).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass

__all__ = [
    "SCENARIOS",
    "ClientUsage",
    "Scenario",
    "Workload",
    "add_run_args",
    "build_record",
    "client_usage",
    "emit_record",
    "run_settings_from_args",
]


@dataclass(frozen=True)
class Scenario:
    """The simulated provider: latency of every call and the cap on calls in flight."""

    name: str
    latency_s: float
    cap: int


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("500ms-cap16", 0.5, 16),
    Scenario("500ms-cap64", 0.5, 64),
    Scenario("200ms-cap16", 0.2, 16),
)
"""The scenarios of issue 7."""


@dataclass(frozen=True)
class Workload:
    """Optimizer settings shared by both systems (defaults: issue 7's workload)."""

    n_train: int = 100
    n_val: int = 100
    n_test: int = 200
    num_candidates: int = 6
    num_trials: int = 20
    minibatch_size: int = 25
    full_eval_steps: int = 5
    max_bootstrapped_demos: int = 4
    max_labeled_demos: int = 4
    seed: int = 0


@dataclass(frozen=True)
class ClientUsage:
    """CPU seconds (user + system, self + waited-for children) and peak RSS of a client."""

    cpu_s: float
    peak_rss_mb: float


def client_usage() -> ClientUsage:
    """Resource usage of this process and its reaped children so far (``getrusage``)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
    # ru_maxrss is in KiB on Linux; children's is the largest single child's.
    return ClientUsage(cpu_s=cpu, peak_rss_mb=max(me.ru_maxrss, kids.ru_maxrss) / 1024)


def add_run_args(parser: argparse.ArgumentParser) -> None:
    """Adds the scenario, workload and simulator options shared by the runners."""
    names = [s.name for s in SCENARIOS]
    parser.add_argument("--scenario", default="200ms-cap16", help=f"one of {names} or 'custom'")
    parser.add_argument("--latency", type=float, help="custom latency in seconds")
    parser.add_argument("--cap", type=int, help="custom cap on calls in flight")
    defaults = Workload()
    for name, value in asdict(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=value)
    parser.add_argument("--base-url", help="use a running simulated LLM (else start one)")
    parser.add_argument("--control-url", help="its control API (with --base-url)")


def run_settings_from_args(args: argparse.Namespace) -> tuple[Scenario, Workload]:
    """The scenario and workload selected by `add_run_args` options.

    ``--latency``/``--cap`` override the named scenario's values (the name becomes custom).
    """
    by_name = {s.name: s for s in SCENARIOS}
    base = by_name.get(args.scenario, Scenario("custom", 0.2, 16))
    if args.latency is not None or args.cap is not None:
        latency = args.latency if args.latency is not None else base.latency_s
        cap = args.cap if args.cap is not None else base.cap
        base = Scenario(f"custom-{int(latency * 1000)}ms-cap{cap}", latency, cap)
    workload = Workload(**{k: getattr(args, k) for k in asdict(Workload())})
    return base, workload


def build_record(
    *,
    system: str,
    scenario: Scenario,
    workload: Workload,
    wall_s: float,
    optimize_stats: Mapping[str, object],
    holdout_score: float | None,
    oracle_score: float | None,
    baseline_oracle: float,
    usage: ClientUsage,
    extra: Mapping[str, object] | None = None,
) -> dict[str, object]:
    """The run record: one flat-ish JSON object, the same keys for every system.

    ``ideal_s`` is optimization calls x latency / cap; ``efficiency`` is ideal / wall.
    """
    calls = optimize_stats["calls"]
    assert isinstance(calls, int)
    ideal = calls * scenario.latency_s / scenario.cap
    record: dict[str, object] = {
        "system": system,
        "scenario": scenario.name,
        "latency_s": scenario.latency_s,
        "cap": scenario.cap,
        "workload": asdict(workload),
        "calls": calls,
        "calls_by_phase": optimize_stats["by_phase"],
        "calls_by_kind": optimize_stats["by_kind"],
        "wall_s": round(wall_s, 3),
        "ideal_s": round(ideal, 3),
        "efficiency": round(ideal / wall_s, 4) if wall_s > 0 else None,
        "peak_in_flight": optimize_stats["peak_in_flight"],
        "mean_in_flight": round(float(str(optimize_stats["mean_in_flight"])), 3),
        "holdout_score": holdout_score,
        "oracle_score": None if oracle_score is None else round(oracle_score, 4),
        "baseline_oracle": round(baseline_oracle, 4),
        "client_cpu_s": round(usage.cpu_s, 2),
        "peak_rss_mb": round(usage.peak_rss_mb, 1),
        "server": optimize_stats.get("server"),
        "in_flight_by_second": optimize_stats.get("in_flight_by_second"),
    }
    if extra:
        record.update(extra)
    return record


def emit_record(record: Mapping[str, object]) -> None:
    """Prints the record as one JSON line on the real stdout (runners read its last line)."""
    out = sys.__stdout__ if sys.__stdout__ is not None else sys.stdout
    out.write(json.dumps(record) + "\n")
    out.flush()
