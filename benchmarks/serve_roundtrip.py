"""Round-trip benchmark of the Serve app (issue 4): suggest + evaluate, like Ax's AxMiPRO.

Prints p50/p95 latency of one round trip (suggest, then evaluate) and throughput at 1, 8 and
32 concurrent clients on a 100-trial study of the Ax parameter shape, next to

- a bare Serve no-op endpoint (same deployment settings; one "round trip" = two POSTs),
- in-process Optuna ask+tell on the same SQLite database (naive ``RDBStorage``),
- in-process ``StudyState`` (this app's write-through path, without HTTP or Ray).

Not a test. Run under the Ray lock::

    flock /tmp/mipro-ray-ray.lock .venv/bin/python -m benchmarks.serve_roundtrip
    flock /tmp/mipro-ray-ray.lock .venv/bin/python -m benchmarks.serve_roundtrip --direct-ingress
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import socket
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

logger = logging.getLogger("benchmarks.serve_roundtrip")

ORIGINAL_SERVICE = "original service (issue 4): p50 18 ms at 1 client, 70-88 round trips/s at 8-32"
CHOICES = [f"Instruction candidate {i}: " + "be precise and cite the input. " * 8 for i in range(5)]
PARAMETERS: list[dict[str, Any]] = [
    {"name": "temperature", "type": "float", "low": 0.1, "high": 2.0},
    {"name": "bootstrappedDemos", "type": "int", "low": 0, "high": 3},
    {"name": "instruction", "type": "categorical", "choices": CHOICES},
    {"name": "labeledExamples", "type": "int", "low": 0, "high": 4},
]


@dataclass(frozen=True)
class Row:
    """One line of the result table."""

    system: str
    clients: int
    p50_ms: float
    p95_ms: float
    per_s: float

    def render(self) -> str:
        return (
            f"| {self.system:<34} | {self.clients:>7} | {self.p50_ms:>8.1f} | "
            f"{self.p95_ms:>8.1f} | {self.per_s:>9.1f} |"
        )


def _row(system: str, clients: int, latencies: list[float], wall: float) -> Row:
    ordered = sorted(latencies)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return Row(system, clients, statistics.median(ordered) * 1e3, p95 * 1e3, len(ordered) / wall)


async def _drive(
    clients: int, total: int, round_trip: Callable[[], Awaitable[None]]
) -> tuple[list[float], float]:
    """Runs ``total`` round trips from ``clients`` concurrent loops; returns latencies, wall."""
    latencies: list[float] = []
    tickets = iter(range(total))  # shared by the loops: each round trip is taken once

    async def loop() -> None:
        for _ in tickets:
            start = time.perf_counter()
            await round_trip()
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(clients)))
    return latencies, time.perf_counter() - start


def _request(name: str, n_trials: int) -> dict[str, Any]:
    return {
        "study_name": name,
        "parameters": PARAMETERS,
        "objective": {"name": "score", "direction": "maximize"},
        "n_trials": n_trials,
        "sampler": "TPESampler",
        "pruner": "MedianPruner",
    }


async def bench_http(base: str, noop: str, levels: list[int], trials: int) -> list[Row]:
    """Round trips through Serve: the no-op pair and the app's suggest + evaluate."""
    rows: list[Row] = []
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def noop_pair() -> None:
            for _ in range(2):
                (await client.post(noop, json={"trial_number": 0, "value": 0.5})).raise_for_status()

        await _drive(4, 40, noop_pair)  # warm-up
        for clients in levels:
            latencies, wall = await _drive(clients, trials, noop_pair)
            rows.append(_row("Serve no-op x2 (bare)", clients, latencies, wall))

        for clients in levels:
            name = f"bench_{uuid.uuid4().hex[:10]}"
            created = await client.post(f"{base}/optimize", json=_request(name, trials))
            created.raise_for_status()

            async def round_trip(name: str = name) -> None:
                suggestion = await client.post(f"{base}/studies/{name}/suggest")
                suggestion.raise_for_status()
                number = suggestion.json()["trial_number"]
                told = await client.post(
                    f"{base}/studies/{name}/evaluate",
                    json={"study_name": name, "trial_number": number, "value": random.random()},
                )
                told.raise_for_status()

            latencies, wall = await _drive(clients, trials, round_trip)
            rows.append(_row("mipro-ray serve_app suggest+evaluate", clients, latencies, wall))
    return rows


def bench_in_process(data_dir: Path, trials: int) -> list[Row]:
    """Optuna ask+tell on the same SQLite database, and this app's StudyState, in-process."""
    import optuna

    from serve_app.database import connect, utcnow
    from serve_app.jobs import JobRecord
    from serve_app.models import JobStatus, OptimizationRequest
    from serve_app.samplers import search_space
    from serve_app.settings import Settings
    from serve_app.studies import _create_study
    from serve_app.study_state import StudyState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    settings = Settings(data_dir=data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    request = OptimizationRequest.model_validate(_request("inproc_state", trials))
    space = search_space(request.parameters)
    rows: list[Row] = []

    study = optuna.create_study(
        study_name="inproc_rdb",
        storage=settings.resolved_database_url,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(),
    )
    latencies = []
    start = time.perf_counter()
    for _ in range(trials):
        t0 = time.perf_counter()
        trial = study.ask(space)
        study.tell(trial, random.random())
        latencies.append(time.perf_counter() - t0)
    rows.append(_row("in-process Optuna ask+tell, RDB", 1, latencies, time.perf_counter() - start))

    memory = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler())
    latencies = []
    start = time.perf_counter()
    for _ in range(trials):
        t0 = time.perf_counter()
        trial = memory.ask(space)
        memory.tell(trial, random.random())
        latencies.append(time.perf_counter() - t0)
    rows.append(
        _row("in-process Optuna ask+tell, memory", 1, latencies, time.perf_counter() - start)
    )

    db = connect(settings)
    job = JobRecord(
        job_id=str(uuid.uuid4()),
        study_name="inproc_state",
        status=JobStatus.PENDING,
        n_trials=trials,
        request=request,
        created_at=utcnow(),
    )
    _create_study(db, request, job)
    state = StudyState("inproc_state", settings)
    latencies = []
    start = time.perf_counter()
    for _ in range(trials):
        t0 = time.perf_counter()
        number = state.suggest().trial_number
        state.evaluate(number, random.random(), None)
        latencies.append(time.perf_counter() - t0)
    rows.append(
        _row("in-process StudyState (write-through)", 1, latencies, time.perf_counter() - start)
    )
    return rows


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _deploy(data_dir: Path, port: int) -> tuple[str, str]:
    import ray
    from fastapi import FastAPI
    from ray import serve

    from serve_app import build_app
    from serve_app.settings import Settings

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="bench")
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    noop_api = FastAPI()

    @noop_api.post("/")
    async def noop() -> dict[str, str]:
        return {"status": "ok"}

    @serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 0})
    @serve.ingress(noop_api)
    class NoOp:
        pass

    settings = Settings(data_dir=data_dir, actor_namespace="mipro_ray_bench")
    serve.run(NoOp.bind(), name="noop", route_prefix="/noop")
    serve.run(build_app(settings), name="app", route_prefix="/app")
    return f"http://127.0.0.1:{port}/app", f"http://127.0.0.1:{port}/noop/"


def main() -> None:
    """Runs the benchmark and prints a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument(
        "--direct-ingress", action="store_true", help="set RAY_SERVE_ENABLE_DIRECT_INGRESS=1"
    )
    parser.add_argument(
        "--throughput-optimized",
        action="store_true",
        help="set RAY_SERVE_THROUGHPUT_OPTIMIZED=1 (user code on the replica's main loop)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if args.direct_ingress:
        os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "1"
    if args.throughput_optimized:
        os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"

    with tempfile.TemporaryDirectory(prefix="mipro_bench_") as tmp:
        in_process = bench_in_process(Path(tmp) / "inproc", args.trials)
        base, noop = _deploy(Path(tmp) / "serve", _free_port())
        try:
            rows = asyncio.run(bench_http(base, noop, args.levels, args.trials))
        finally:
            import ray
            from ray import serve

            serve.shutdown()
            ray.shutdown()

    mode = "direct ingress" if args.direct_ingress else "default proxy"
    if args.throughput_optimized:
        mode += ", RAY_SERVE_THROUGHPUT_OPTIMIZED=1"
    print(f"\nServe round trip, {args.trials}-trial study, Ax parameter shape, {mode}\n")
    print("| system                             | clients | p50 (ms) | p95 (ms) | trips/s   |")
    print("|------------------------------------|---------|----------|----------|-----------|")
    for row in [*in_process, *rows]:
        print(row.render())
    noop_p50 = {r.clients: r.p50_ms for r in rows if r.system.startswith("Serve no-op")}
    for row in rows:
        if row.system.startswith("mipro-ray"):
            ratio = row.p50_ms / noop_p50[row.clients]
            print(f"clients={row.clients}: p50 ratio to two bare no-op requests = {ratio:.2f}")
    print(ORIGINAL_SERVICE)


if __name__ == "__main__":
    main()
