"""The cluster-wide limiter actor: one cap for every process, and no slot lost to a crash."""

from __future__ import annotations

import asyncio
import math
import threading
import time
import uuid

import pytest
import ray

from mipro_ray import LMConfig
from mipro_ray.limiter import LocalLimiter
from mipro_ray.ray_limiter import (
    _REUSE_S,
    HandoverLimiter,
    RayLimiter,
    get_limiter_actor,
    limiter_name,
)

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
        await limiter.aclose()

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


def test_a_client_reuses_a_freed_lease_for_its_next_call_and_gives_it_back(
    ray_address: str,
) -> None:
    """Back-to-back calls of one client cost one actor round trip, not one each; the lease
    is back at the actor once the client closes. When the actor has an RPM limit (set by
    the client that created it) every call is counted, whatever the client's own config."""

    async def calls(limiter: RayLimiter, n: int) -> None:
        for _ in range(n):
            await limiter.acquire(10)
            await asyncio.sleep(0.01)
            await limiter.release(10)
        await limiter.aclose()

    config = _config(2)
    actor = get_limiter_actor(config)
    asyncio.run(calls(RayLimiter.for_config(config), 20))
    stats = ray.get(actor.stats.remote())
    assert stats.total_acquired == 1
    assert stats.in_flight == 0 and stats.total_released_tokens == 200

    model = f"limiter-test-{uuid.uuid4().hex[:8]}"
    actor = get_limiter_actor(LMConfig(model=model, max_concurrency=2, rpm=6000))
    unlimited = LMConfig(model=model, max_concurrency=2)  # same endpoint, no RPM of its own
    assert limiter_name(unlimited) == limiter_name(LMConfig(model=model, max_concurrency=2, rpm=1))
    asyncio.run(calls(RayLimiter.for_config(unlimited), 20))
    assert ray.get(actor.stats.remote()).total_acquired == 20


def test_a_reusing_client_lets_a_waiting_process_in_within_the_reuse_window(
    ray_address: str,
) -> None:
    """A client that keeps its only slot busy gives it back to the actor after `_REUSE_S`:
    another process waiting there gets its turn while the first client still calls."""
    config = _config(1)
    get_limiter_actor(config)

    async def busy() -> tuple[float, float]:
        limiter = RayLimiter.for_config(config)
        start = time.monotonic()
        waiter = _timed_hold.remote(limiter_name(config))
        admitted_after: float | None = None
        while time.monotonic() - start < 3 * _REUSE_S:
            await limiter.acquire(1)
            await asyncio.sleep(0.01)
            await limiter.release(1)
            if admitted_after is None and ray.wait([waiter], timeout=0)[0]:
                admitted_after = time.monotonic() - start
        await limiter.aclose()
        waited = ray.get(waiter)
        return waited, admitted_after if admitted_after is not None else math.inf

    waited, done_after = asyncio.run(busy())
    assert waited < _REUSE_S + 1.5
    assert done_after < 3 * _REUSE_S  # while the first client was still calling


@ray.remote(num_cpus=0)
def _timed_hold(name: str) -> float:
    async def run() -> float:
        limiter = RayLimiter(name, ttl_s=30)
        start = time.monotonic()
        await limiter.acquire(1)
        waited = time.monotonic() - start
        await limiter.release(1)
        await limiter.aclose()
        return waited

    return asyncio.run(run())


def test_a_handover_to_the_cluster_limiter_keeps_the_cap_while_calls_are_in_flight(
    ray_address: str,
) -> None:
    """The driver starts on an in-process limiter; at the hand-over its held slots become
    cluster leases before other processes may use the cluster limiter."""
    config = _config(4)
    actor = get_limiter_actor(config)
    handover = HandoverLimiter(LocalLimiter(max_in_flight=4))
    held = 0
    peak_held = 0

    async def call(gate: asyncio.Event) -> None:
        nonlocal held, peak_held
        await handover.acquire(10)
        held += 1
        peak_held = max(peak_held, held)
        await gate.wait()  # the first 4 hold their slots until the hand-over took effect
        await asyncio.sleep(0.2)
        held -= 1
        await handover.release(10)

    async def run() -> int:
        gate = asyncio.Event()
        calls = [asyncio.ensure_future(call(gate)) for _ in range(10)]
        await asyncio.sleep(0.1)  # 4 calls hold local slots, 6 wait
        threading.Thread(target=handover.hand_over, args=(RayLimiter.for_config(config),)).start()
        assert await asyncio.to_thread(handover.handed_over.wait, 30)
        adopted = ray.get(actor.stats.remote()).in_flight
        gate.set()
        others = [_hold.remote(limiter_name(config), 0.3) for _ in range(8)]
        await asyncio.gather(*calls, *others)
        return int(adopted)

    adopted = asyncio.run(run())
    stats = ray.get(actor.stats.remote())
    assert adopted == 4  # every slot held at the switch got a cluster lease first
    assert peak_held == 4
    assert stats.peak_in_flight == 4, "the cap of 4 was exceeded across the hand-over"
    assert stats.in_flight == 0
    # Adopted + others + the driver's later calls, some of which reused a freed lease.
    assert 4 + 8 <= stats.total_acquired <= 4 + 6 + 8


def test_a_handover_with_nothing_held_waits_for_the_limiter_actor_not_the_calls(
    ray_address: str,
) -> None:
    """Handing over while the cluster limiter's process still starts (seconds on a loaded
    machine) must not stall the driver's calls: they go on under the local limiter until the
    actor answers, and only then go through it."""
    config = _config(2)
    handover = HandoverLimiter(LocalLimiter(max_in_flight=2))

    async def run() -> tuple[float, int]:
        await handover.acquire(1)
        await handover.release(1)  # used, nothing held at the hand-over
        actor = get_limiter_actor(config, wait=False)  # its process starts now
        handover.hand_over(RayLimiter.for_config(config))
        # Not switched yet: the actor has not answered (it could not: this loop has not
        # yielded since).
        assert not handover.handed_over.is_set()
        slowest = 0.0
        while not handover.handed_over.is_set():
            start = time.monotonic()
            await handover.acquire(1)
            slowest = max(slowest, time.monotonic() - start)
            await asyncio.sleep(0.01)
            await handover.release(1)
        assert handover.error is None
        await handover.acquire(1)  # now a cluster lease
        in_flight = (await actor.stats.remote()).in_flight
        await handover.release(1)
        await handover.aclose()
        return slowest, int(in_flight)

    slowest, in_flight = asyncio.run(run())
    assert slowest < 0.2, f"a call waited {slowest:.2f} s for the limiter actor to start"
    assert in_flight == 1
    assert ray.get(get_limiter_actor(config).stats.remote()).in_flight == 0


def test_a_handover_under_full_load_ends_every_call_and_leaves_no_lease(
    ray_address: str,
) -> None:
    """Calls queue beyond the cap and keep finishing while the hand-over adopts their slots:
    every call ends at once (none waits for a lease's time-to-live), the cap holds across the
    switch, and no cluster lease is left behind."""
    config = _config(4)
    handover = HandoverLimiter(LocalLimiter(max_in_flight=4))
    in_flight = peak = 0

    async def call() -> None:
        nonlocal in_flight, peak
        await handover.acquire(1)
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        await handover.release(1)

    async def worker() -> None:  # like a trial: one call after another
        for _ in range(60):
            await call()

    async def run() -> None:
        calls = [asyncio.ensure_future(worker()) for _ in range(16)]
        await asyncio.sleep(0.05)  # 4 in flight, 12 queued
        # As in a run that started its cluster: the limiter actor's process is still starting.
        get_limiter_actor(config, wait=False)
        threading.Thread(target=handover.hand_over, args=(RayLimiter.for_config(config),)).start()
        assert await asyncio.to_thread(handover.handed_over.wait, 30)
        assert handover.error is None
        others = [_hold.remote(limiter_name(config), 0.01) for _ in range(20)]
        await asyncio.wait_for(asyncio.gather(*calls, *others), timeout=30)

    asyncio.run(run())
    stats = ray.get(get_limiter_actor(config).stats.remote())
    assert peak <= 4
    assert stats.peak_in_flight <= 4, "the cap of 4 was exceeded across the hand-over"
    assert stats.in_flight == 0 and stats.waiting == 0, "a cluster lease was left behind"


def test_a_hand_over_that_cannot_reach_the_cluster_limiter_reports_why() -> None:
    class Unreachable:  # a `RayLimiter` whose actor never answers
        async def ready(self) -> None:
            raise RuntimeError("limiter actor unreachable")

        async def acquire(self, tokens: int) -> None:
            raise AssertionError("not ready: nothing may be acquired")

        async def release(self, tokens: int) -> None:
            raise AssertionError("nothing was acquired")

    handover = HandoverLimiter(LocalLimiter(max_in_flight=2))

    async def run() -> None:
        await handover.acquire(1)  # a call in flight: its slot must be adopted
        await asyncio.to_thread(handover.hand_over, Unreachable())
        assert await asyncio.to_thread(handover.handed_over.wait, 10), "the waiter would hang"

    asyncio.run(run())
    assert isinstance(handover.error, RuntimeError)
    assert "unreachable" in str(handover.error)
