"""Throughput of the cluster-wide limiter: acquire-release cycles per second through one
`RayLimiter` client (as a trial or the driver's lanes use it), and the client's CPU.

Each of ``--clients`` coroutines runs ``--calls`` cycles of acquire, hold ``--hold-s``,
release, against a fresh limiter actor with ``--cap`` slots on a local Ray cluster; the ideal
is ``cap / hold_s`` cycles a second. ``--no-reuse`` measures one actor round trip per call
(what an endpoint with an RPM/TPM limit gets). Prints one JSON line.

    flock /tmp/mipro-ray-ray.lock .venv/bin/python -m benchmarks.limiter_throughput
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: measure and print one JSON record."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.limiter_throughput")
    parser.add_argument("--cap", type=int, default=64)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--calls", type=int, default=40, help="cycles per client")
    parser.add_argument("--hold-s", type=float, default=0.05)
    parser.add_argument("--no-reuse", action="store_true", help="one actor round trip per call")
    args = parser.parse_args(argv)

    import ray

    from mipro_ray import LMConfig
    from mipro_ray.ray_limiter import RayLimiter, get_limiter_actor, limiter_name

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    config = LMConfig(
        model=f"limiter-bench-{uuid.uuid4().hex[:8]}", api_key_env=None, max_concurrency=args.cap
    )
    actor = get_limiter_actor(config)
    limiter = RayLimiter.for_config(config)
    if args.no_reuse:
        limiter = RayLimiter(limiter_name(config), ttl_s=config.timeout_s + 5, reuse=False)

    async def client(n: int) -> None:
        for _ in range(n):
            await limiter.acquire(1)
            await asyncio.sleep(args.hold_s)
            await limiter.release(1)

    async def run() -> tuple[float, float]:
        await client(3)  # connect
        wall, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*[client(args.calls) for _ in range(args.clients)])
        result = time.perf_counter() - wall, time.process_time() - cpu
        await limiter.aclose()
        return result

    wall, cpu = asyncio.run(run())
    cycles = args.clients * args.calls
    stats = ray.get(actor.stats.remote())
    print(
        json.dumps(
            {
                "reuse": not args.no_reuse,
                "cycles": cycles,
                "cycles_per_s": round(cycles / wall, 1),
                "ideal_per_s": round(min(args.clients, args.cap) / args.hold_s, 1),
                "client_cpu_ms_per_cycle": round(1000 * cpu / cycles, 3),
                "actor_acquires": stats.total_acquired,
                "peak_in_flight": stats.peak_in_flight,
                "in_flight_after": stats.in_flight,
            }
        )
    )
    ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
