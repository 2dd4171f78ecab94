"""Run every scenario for both systems, side by side, and print a Markdown table.

::

    .venv/bin/python -m benchmarks.run_all                 # issue 7's three scenarios
    .venv/bin/python -m benchmarks.run_all --scenario 200ms-cap16 --systems dspy

For each scenario and system this starts a fresh simulated LLM process (same seed), then the
system's runner as a subprocess: DSPy under the benchmark venv's interpreter (so its
dependencies never touch the library venv), mipro-ray under this interpreter behind the shared
Ray lock (``flock``). Each runner prints one JSON line; they are echoed as they arrive and
summarised in a table at the end. A failed run is reported in the table, not hidden.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

from benchmarks.settings import SCENARIOS, Scenario, Workload
from benchmarks.simproc import REPO_ROOT, SimProcess

__all__ = ["main", "markdown_table", "run_one"]

RUNNERS = {
    "dspy": "benchmarks.run_dspy",
    "ours": "benchmarks.run_ours",
    "ours-warm": "benchmarks.run_ours",
}
DEFAULT_BENCH_PYTHON = REPO_ROOT / ".venv-bench" / "bin" / "python"
DEFAULT_RAY_LOCK = "/tmp/mipro-ray-ray.lock"
_CLUSTER_ENV = {"RAY_AUTH_MODE": "disabled"}  # a loopback-only benchmark cluster


def _runner_command(
    system: str, scenario: Scenario, workload: Workload, args: argparse.Namespace
) -> list[str]:
    python = str(args.bench_python) if system == "dspy" else sys.executable
    cmd = [python, "-m", RUNNERS[system]]
    if scenario in SCENARIOS:
        cmd += ["--scenario", scenario.name]
    else:
        cmd += ["--latency", str(scenario.latency_s), "--cap", str(scenario.cap)]
    for name, value in asdict(workload).items():
        cmd += [f"--{name.replace('_', '-')}", str(value)]
    if system != "dspy" and args.ray_lock:
        flock = shutil.which("flock")
        if flock is None:
            raise RuntimeError("flock(1) is needed to hold the Ray lock (or pass --ray-lock '')")
        cmd = [flock, args.ray_lock, *cmd]
    return cmd


def run_one(
    system: str, scenario: Scenario, workload: Workload, args: argparse.Namespace
) -> dict[str, object]:
    """Runs one system on one scenario against a fresh simulated LLM; returns its record.

    ``ours-warm`` first starts a Ray cluster (``ray start --head``, not timed) and runs
    mipro-ray as a driver of that cluster, the way ``ray job submit`` runs do.
    """
    with contextlib.ExitStack() as stack:
        sim = stack.enter_context(
            SimProcess(latency_s=scenario.latency_s, cap=scenario.cap, seed=workload.seed)
        )
        assert sim.endpoint is not None
        cmd = _runner_command(system, scenario, workload, args)
        cmd += ["--base-url", sim.endpoint.base_url, "--control-url", sim.endpoint.control_url]
        env = None
        if system == "ours-warm":
            cmd += ["--ray-temp-dir", stack.enter_context(_ray_cluster())]
            env = {**os.environ, **_CLUSTER_ENV}  # the driver must match the cluster's auth
        proc = subprocess.run(
            cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True, check=False, env=env
        )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {
            "system": system,
            "scenario": scenario.name,
            "error": f"runner exited with {proc.returncode} (see its stderr above)",
        }
    record: dict[str, object] = json.loads(lines[-1])
    return record


@contextlib.contextmanager
def _ray_cluster() -> Iterator[str]:
    """A one-node Ray cluster for the warm runs (2 CPUs, no dashboard); yields its temp dir."""
    ray = str(Path(sys.executable).with_name("ray"))
    temp_dir = tempfile.mkdtemp(prefix="mipro-bench-ray-")
    env = {**os.environ, **_CLUSTER_ENV}
    start = [ray, "start", "--head", "--num-cpus=2", "--include-dashboard=false"]
    subprocess.run([*start, f"--temp-dir={temp_dir}"], check=True, env=env, capture_output=True)
    try:
        yield temp_dir
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, check=False)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _fmt(value: object, spec: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return format(value, spec or ".3g")
    return str(value)


def markdown_table(records: Sequence[Mapping[str, object]]) -> str:
    """The records as a Markdown table, one row per run, plus wall-time ratios per scenario."""
    head = (
        "| scenario | system | LLM calls (boot/prop/search) | wall s | ideal s | efficiency "
        "| in-flight peak/mean | held-out | oracle (baseline) | client CPU s | peak RSS MB |"
    )
    rows = [head, "|" + "---|" * 11]
    for r in records:
        if "error" in r:
            rows.append(f"| {r['scenario']} | {r['system']} | {r['error']} |" + " |" * 8)
            continue
        phases = r.get("calls_by_phase")
        split = "/".join(str(v) for v in phases.values()) if isinstance(phases, dict) else "?"
        rows.append(
            f"| {r['scenario']} | {r['system']} | {r['calls']} ({split}) "
            f"| {_fmt(r['wall_s'], '.1f')} | {_fmt(r['ideal_s'], '.1f')} "
            f"| {_fmt(r['efficiency'], '.2f')} "
            f"| {r['peak_in_flight']} / {_fmt(r['mean_in_flight'], '.1f')} "
            f"| {_fmt(r['holdout_score'], '.3f')} "
            f"| {_fmt(r['oracle_score'], '.3f')} ({_fmt(r['baseline_oracle'], '.2f')}) "
            f"| {_fmt(r['client_cpu_s'], '.1f')} | {_fmt(r['peak_rss_mb'], '.0f')} |"
        )
    walls: dict[str, dict[str, float]] = {}
    for r in records:
        wall = r.get("wall_s")
        if isinstance(wall, int | float):
            walls.setdefault(str(r["scenario"]), {})[str(r["system"])] = float(wall)
    ratios = [
        f"{name}: {ours}/dspy wall = {w[ours] / w['dspy']:.2f}"
        for name, w in walls.items()
        for ours in ("mipro_ray", "mipro_ray_warm")
        if ours in w and "dspy" in w
    ]
    return "\n".join(rows + (["", *ratios] if ratios else []))


def _scenarios(args: argparse.Namespace) -> list[Scenario]:
    if args.latency is not None or args.cap is not None:
        latency = args.latency if args.latency is not None else 0.2
        cap = args.cap if args.cap is not None else 16
        return [Scenario(f"custom-{int(latency * 1000)}ms-cap{cap}", latency, cap)]
    by_name = {s.name: s for s in SCENARIOS}
    names = args.scenario if args.scenario else list(by_name)
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {unknown}; choose from {list(by_name)}")
    return [by_name[n] for n in names]


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: run the selected scenarios and systems, print JSON lines and the table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run_all", description=__doc__)
    parser.add_argument("--scenario", action="append", help="repeatable; default: all")
    parser.add_argument("--latency", type=float, help="a custom scenario's latency in seconds")
    parser.add_argument("--cap", type=int, help="a custom scenario's cap on calls in flight")
    parser.add_argument(
        "--systems", default="dspy,ours,ours-warm", help="comma-separated: dspy,ours,ours-warm"
    )
    parser.add_argument("--bench-python", type=Path, default=DEFAULT_BENCH_PYTHON)
    parser.add_argument("--ray-lock", default=DEFAULT_RAY_LOCK, help="'' to run without flock")
    parser.add_argument("--out", type=Path, help="also append the JSON lines to this file")
    for name, value in asdict(Workload()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=value)
    args = parser.parse_args(argv)
    workload = Workload(**{k: getattr(args, k) for k in asdict(Workload())})
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in RUNNERS]
    if unknown:
        raise SystemExit(f"unknown system(s) {unknown}; choose from {list(RUNNERS)}")
    if "dspy" in systems and not args.bench_python.exists():
        raise SystemExit(
            f"{args.bench_python} not found: python3 -m venv .venv-bench && "
            ".venv-bench/bin/pip install 'dspy[optuna]==3.4.1'"
        )
    records: list[dict[str, object]] = []
    for scenario in _scenarios(args):
        for system in systems:
            record = run_one(system, scenario, workload, args)
            line = json.dumps(record)
            print(line, flush=True)
            if args.out is not None:
                with args.out.open("a") as out:
                    out.write(line + "\n")
            records.append(record)
    print()
    print(markdown_table(records))
    return 0 if all("error" not in r for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
