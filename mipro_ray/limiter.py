"""Admission control for LM calls: in-flight cap, requests per minute, tokens per minute.

`Limiter` is the protocol the LM client calls around every HTTP attempt:
``await limiter.acquire(estimated_tokens, priority=p)`` before it,
``await limiter.release(actual_tokens)`` after it (in a ``finally``). Waiters of a higher
priority are admitted first (the optimizer's preparation, on the run's critical path, before
the trials' calls); FIFO within a priority.

`LocalLimiter` is the in-process implementation; a cluster-wide limiter (a Ray actor) can wrap
a `LocalLimiter`, or reuse `RateWindow`, the clock-driven bookkeeping that decides whether one
more request may start now.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from mipro_ray.errors import ConfigError

__all__ = ["Limiter", "LimiterStats", "LocalLimiter", "RateWindow"]


@runtime_checkable
class Limiter(Protocol):
    """Admission control shared by the LM clients that talk to one endpoint.

    Contract: every successful ``acquire(tokens)`` is matched by exactly one
    ``release(tokens)`` (the actual token count of the attempt, 0 if it failed).
    ``acquire`` may wait; it must be cancellable without leaking a slot.
    """

    async def acquire(self, tokens: int, *, priority: int = 0) -> None:
        """Waits until one more request of about ``tokens`` tokens may start (waiters of a
        higher ``priority`` first)."""
        ...

    async def release(self, tokens: int) -> None:
        """Marks one started request as finished; ``tokens`` is what it actually used."""
        ...


class LimiterStats(BaseModel):
    """A snapshot of a limiter's counters.

    Attributes:
        in_flight: Requests admitted and not yet released.
        peak_in_flight: Highest ``in_flight`` seen since creation.
        waiting: Callers currently queued in ``acquire``.
        total_acquired: Requests admitted since creation.
        total_released_tokens: Sum of the token counts passed to ``release``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    in_flight: int
    peak_in_flight: int
    waiting: int
    total_acquired: int
    total_released_tokens: int


class RateWindow:
    """Synchronous admission bookkeeping: in-flight cap plus sliding RPM/TPM windows.

    It never sleeps: `wait_time` says how long until a request of ``tokens`` tokens could be
    admitted (0 = now, ``None`` = only after a release), and `admit` records it. Token usage
    is charged at admission with the caller's estimate, as providers reserve ``max_tokens``.
    A single request larger than ``tpm`` is admitted once the token window is empty, so it
    runs alone instead of deadlocking.

    Args:
        max_in_flight: Most requests admitted and not yet released.
        rpm: Most admissions per ``window_s``; ``None`` = unlimited.
        tpm: Most estimated tokens admitted per ``window_s``; ``None`` = unlimited.
        window_s: Length of the sliding window (60 s for per-minute limits).
        clock: Monotonic clock in seconds (injectable for tests).
    """

    def __init__(
        self,
        *,
        max_in_flight: int,
        rpm: int | None = None,
        tpm: int | None = None,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_in_flight < 1:
            raise ConfigError(f"max_in_flight must be >= 1, got {max_in_flight}")
        if rpm is not None and rpm < 1:
            raise ConfigError(f"rpm must be >= 1 or None, got {rpm}")
        if tpm is not None and tpm < 1:
            raise ConfigError(f"tpm must be >= 1 or None, got {tpm}")
        if window_s <= 0:
            raise ConfigError(f"window_s must be > 0, got {window_s}")
        self.max_in_flight = max_in_flight
        self.rpm = rpm
        self.tpm = tpm
        self.window_s = window_s
        self._clock = clock
        self._starts: deque[float] = deque()
        self._tokens: deque[tuple[float, int]] = deque()
        self._tokens_in_window = 0
        self.in_flight = 0
        self.peak_in_flight = 0
        self.total_acquired = 0
        self.total_released_tokens = 0

    def _expire(self, now: float) -> None:
        horizon = now - self.window_s
        while self._starts and self._starts[0] <= horizon:
            self._starts.popleft()
        while self._tokens and self._tokens[0][0] <= horizon:
            self._tokens_in_window -= self._tokens.popleft()[1]

    def wait_time(self, tokens: int) -> float | None:
        """Seconds until a request of ``tokens`` tokens could be admitted.

        Returns:
            0.0 if it can be admitted now, a positive delay if a window is full, or ``None``
            if the in-flight cap is reached (only a release can make room).
        """
        if self.in_flight >= self.max_in_flight:
            return None
        now = self._clock()
        self._expire(now)
        wait = 0.0
        if self.rpm is not None and len(self._starts) >= self.rpm:
            oldest_needed = self._starts[len(self._starts) - self.rpm]
            wait = max(wait, oldest_needed + self.window_s - now)
        if self.tpm is not None and self._tokens_in_window > 0:
            allowed = self.tpm - min(tokens, self.tpm)
            freed_sum = self._tokens_in_window
            for stamp, amount in self._tokens:
                if freed_sum <= allowed:
                    break
                freed_sum -= amount
                wait = max(wait, stamp + self.window_s - now)
        return max(wait, 0.0)

    def admit(self, tokens: int) -> None:
        """Records one admitted request (the caller checked `wait_time` first)."""
        now = self._clock()
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        self.total_acquired += 1
        self._starts.append(now)
        if tokens > 0:
            self._tokens.append((now, tokens))
            self._tokens_in_window += tokens

    def release(self, tokens: int) -> None:
        """Records that one admitted request finished after using ``tokens`` tokens."""
        if self.in_flight <= 0:
            raise RuntimeError("release() without a matching acquire()")
        self.in_flight -= 1
        self.total_released_tokens += max(tokens, 0)


@dataclass(eq=False)
class _Waiter:
    tokens: int
    future: asyncio.Future[None]
    priority: int = 0


class LocalLimiter:
    """In-process, FIFO-fair `Limiter` for one event loop.

    Waiters are served by priority, then strictly in arrival order; a release admits the next waiter
    immediately (synchronously), so the pipe stays full. When a rate window is full, a
    timer wakes the queue exactly when the oldest entry expires.

    Args:
        max_in_flight: Most requests in flight at once.
        rpm: Requests per ``window_s`` (per minute by default); ``None`` = unlimited.
        tpm: Estimated tokens per ``window_s``; ``None`` = unlimited.
        window_s: Window length; only tests should change it.
    """

    def __init__(
        self,
        *,
        max_in_flight: int,
        rpm: int | None = None,
        tpm: int | None = None,
        window_s: float = 60.0,
    ) -> None:
        self._window = RateWindow(max_in_flight=max_in_flight, rpm=rpm, tpm=tpm, window_s=window_s)
        self._queue: deque[_Waiter] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        w = self._window
        return (
            f"LocalLimiter(max_in_flight={w.max_in_flight}, rpm={w.rpm}, tpm={w.tpm}, "
            f"in_flight={w.in_flight}, waiting={self.waiting})"
        )

    @property
    def in_flight(self) -> int:
        """Requests admitted and not yet released."""
        return self._window.in_flight

    @property
    def peak_in_flight(self) -> int:
        """Highest number of requests in flight at once since creation."""
        return self._window.peak_in_flight

    @property
    def waiting(self) -> int:
        """Callers currently queued in `acquire`."""
        return sum(1 for w in self._queue if not w.future.done())

    @property
    def total_acquired(self) -> int:
        """Requests admitted since creation."""
        return self._window.total_acquired

    def stats(self) -> LimiterStats:
        """Returns a snapshot of the counters (picklable, for a Ray actor to return)."""
        w = self._window
        return LimiterStats(
            in_flight=w.in_flight,
            peak_in_flight=w.peak_in_flight,
            waiting=self.waiting,
            total_acquired=w.total_acquired,
            total_released_tokens=w.total_released_tokens,
        )

    async def acquire(self, tokens: int, *, priority: int = 0) -> None:
        """Waits until a request of ``tokens`` estimated tokens may start: behind the waiters
        of its priority or higher, ahead of those of a lower one."""
        if not self._queue and self._window.wait_time(tokens) == 0.0:
            self._window.admit(tokens)
            return
        waiter = _Waiter(
            tokens=tokens, future=asyncio.get_running_loop().create_future(), priority=priority
        )
        index = len(self._queue)
        while index > 0 and self._queue[index - 1].priority < priority:
            index -= 1
        self._queue.insert(index, waiter)
        self._pump()
        try:
            await waiter.future
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():
                # Admitted just before the cancellation landed: give the slot back.
                self._window.release(0)
            else:
                self._remove(waiter)
            self._pump()
            raise

    async def release(self, tokens: int) -> None:
        """Frees one slot and admits the next waiter(s) at once."""
        self._window.release(tokens)
        self._pump()

    def _remove(self, waiter: _Waiter) -> None:
        if waiter in self._queue:  # _pump may have popped it already
            self._queue.remove(waiter)

    def _pump(self) -> None:
        """Admits waiters from the head of the queue while the window allows it."""
        while self._queue:
            head = self._queue[0]
            if head.future.done():  # cancelled while queued
                self._queue.popleft()
                continue
            wait = self._window.wait_time(head.tokens)
            if wait is None:
                return  # a release will pump again
            if wait > 0.0:
                self._schedule(wait)
                return
            self._queue.popleft()
            self._window.admit(head.tokens)
            head.future.set_result(None)

    def _schedule(self, delay: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._pump()
