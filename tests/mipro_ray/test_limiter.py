"""LocalLimiter: in-flight cap, FIFO fairness, RPM and TPM sliding windows."""

from __future__ import annotations

import asyncio
import time

import pytest

from mipro_ray.errors import ConfigError
from mipro_ray.limiter import Limiter, LocalLimiter, RateWindow


async def _hold(limiter: LocalLimiter, tokens: int, seconds: float) -> None:
    await limiter.acquire(tokens)
    try:
        await asyncio.sleep(seconds)
    finally:
        await limiter.release(tokens)


def test_local_limiter_satisfies_protocol() -> None:
    assert isinstance(LocalLimiter(max_in_flight=1), Limiter)
    with pytest.raises(ConfigError):
        LocalLimiter(max_in_flight=0)


async def test_max_in_flight_is_respected_and_reached() -> None:
    limiter = LocalLimiter(max_in_flight=4)
    t0 = time.monotonic()
    await asyncio.gather(*(_hold(limiter, 1, 0.05) for _ in range(12)))
    elapsed = time.monotonic() - t0
    assert limiter.peak_in_flight == 4
    assert limiter.in_flight == 0
    assert limiter.total_acquired == 12
    assert 0.14 < elapsed < 1.0  # three full waves of four, back to back


async def test_waiters_are_served_in_arrival_order() -> None:
    limiter = LocalLimiter(max_in_flight=1)
    await limiter.acquire(1)
    order: list[int] = []

    async def worker(i: int) -> None:
        await limiter.acquire(1)
        order.append(i)
        await asyncio.sleep(0)
        await limiter.release(1)

    tasks = []
    for i in range(6):
        tasks.append(asyncio.create_task(worker(i)))
        await asyncio.sleep(0)  # enqueue in a known order
    assert limiter.waiting == 6
    await limiter.release(1)
    await asyncio.gather(*tasks)
    assert order == list(range(6))
    assert limiter.waiting == 0


async def test_a_higher_priority_waiter_goes_ahead_of_earlier_ones() -> None:
    """The optimizer's preparation (priority 1) is not queued behind a trial's calls."""
    limiter = LocalLimiter(max_in_flight=1)
    await limiter.acquire(1)
    order: list[str] = []

    async def one(name: str, priority: int) -> None:
        await limiter.acquire(1, priority=priority)
        order.append(name)
        await limiter.release(1)

    tasks = [asyncio.create_task(one(f"trial-{i}", 0)) for i in range(3)]
    await asyncio.sleep(0)
    tasks += [asyncio.create_task(one(f"prep-{i}", 1)) for i in range(2)]
    await asyncio.sleep(0)
    await limiter.release(1)
    await asyncio.gather(*tasks)
    assert order == ["prep-0", "prep-1", "trial-0", "trial-1", "trial-2"]


async def test_release_starts_next_waiter_immediately() -> None:
    limiter = LocalLimiter(max_in_flight=1)
    await limiter.acquire(1)
    waiter = asyncio.create_task(limiter.acquire(1))
    await asyncio.sleep(0)
    await limiter.release(1)
    assert limiter.in_flight == 1  # handed over synchronously, no gap in the pipe
    await waiter
    await limiter.release(1)


async def test_cancelled_waiter_does_not_leak_a_slot() -> None:
    limiter = LocalLimiter(max_in_flight=1)
    await limiter.acquire(1)
    cancelled = asyncio.create_task(limiter.acquire(1))
    nxt = asyncio.create_task(limiter.acquire(1))
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.sleep(0)
    await limiter.release(1)
    await asyncio.wait_for(nxt, timeout=1)
    assert limiter.in_flight == 1
    assert cancelled.cancelled()


async def test_rpm_window_delays_the_next_request() -> None:
    limiter = LocalLimiter(max_in_flight=10, rpm=3, window_s=0.3)
    starts: list[float] = []
    t0 = time.monotonic()

    async def one() -> None:
        await limiter.acquire(1)
        starts.append(time.monotonic() - t0)
        await limiter.release(1)

    await asyncio.gather(*(one() for _ in range(4)))
    assert all(s < 0.1 for s in starts[:3])
    assert starts[3] >= 0.29


async def test_tpm_window_delays_and_oversized_request_runs_alone() -> None:
    limiter = LocalLimiter(max_in_flight=10, tpm=100, window_s=0.3)
    t0 = time.monotonic()
    await limiter.acquire(60)
    await limiter.release(60)
    await limiter.acquire(40)  # fills the window exactly: no wait
    await limiter.release(40)
    assert time.monotonic() - t0 < 0.1
    await limiter.acquire(10)  # must wait until the first 60 expire
    waited = time.monotonic() - t0
    await limiter.release(10)
    assert waited >= 0.29
    t1 = time.monotonic()
    await limiter.acquire(500)  # larger than tpm: admitted once the window is empty
    assert 0.25 <= time.monotonic() - t1 < 1.0
    await limiter.release(500)


def test_rate_window_reports_waits_with_a_fake_clock() -> None:
    now = [0.0]
    window = RateWindow(max_in_flight=2, rpm=2, tpm=10, window_s=60, clock=lambda: now[0])
    assert window.wait_time(5) == 0.0
    window.admit(5)
    now[0] = 10.0
    window.admit(5)
    assert window.wait_time(1) is None  # in-flight cap: only a release helps
    window.release(5)
    assert window.wait_time(1) == pytest.approx(50.0)  # rpm and tpm both full until t=60
    now[0] = 60.0
    assert window.wait_time(5) == 0.0
    assert window.wait_time(6) == pytest.approx(10.0)
    with pytest.raises(RuntimeError):
        RateWindow(max_in_flight=1).release(0)
