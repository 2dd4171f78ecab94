"""The cluster-wide limiter actor: one cap for every process, and no slot lost to a crash."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import ray

from mipro_ray import LMConfig
from mipro_ray.ray_limiter import RayLimiter, get_limiter_actor, limiter_name

pytestmark = pytest.mark.ray


def _config(cap: int) -> LMConfig:
    return LMConfig(model=f"limiter-test-{uuid.uuid4().hex[:8]}", max_concurrency=cap)


@ray.remote(num_cpus=0)
def _hold(name: str, seconds: float) -> None:
    async def run() -> None:
        limiter = RayLimiter(name, ttl_s=30)
        await limiter.acquire(10)
        await asyncio.sleep(seconds)
        await limiter.release(10)

    asyncio.run(run())


def test_the_cap_holds_across_processes(ray_address: str) -> None:
    config = _config(3)
    actor = get_limiter_actor(config)
    ray.get([_hold.remote(limiter_name(config), 0.5) for _ in range(8)])
    stats = ray.get(actor.stats.remote())
    assert stats.peak_in_flight == 3
    assert stats.total_acquired == 8 and stats.in_flight == 0


def test_a_dead_holder_loses_its_slot_after_the_lease_expires(ray_address: str) -> None:
    config = _config(1)
    actor = get_limiter_actor(config)
    # A lease taken and never released (its holder "died").
    assert ray.get(actor.acquire.remote("dead-holder", 1, 0.5))

    async def next_caller() -> None:
        limiter = RayLimiter(limiter_name(config), ttl_s=30)
        await asyncio.wait_for(limiter.acquire(1), timeout=20)
        await limiter.release(1)

    asyncio.run(next_caller())  # admitted once the expired lease was reclaimed
    assert ray.get(actor.stats.remote()).total_acquired == 2
