"""The cluster-wide LM limiter: one named, detached Ray actor per LM endpoint.

Every LM client of every run on the cluster that talks to the same endpoint (same
`LMConfig.endpoint_key`) goes through the same `LimiterActor`, so the provider's in-flight,
requests-per-minute and tokens-per-minute limits hold however many trials run.

Slots are leases: each admitted request holds a lease with a time-to-live (the client's HTTP
timeout plus a margin). A lease whose holder died (a killed trial actor or driver) is
reclaimed when it expires, so a crash never shrinks the cluster's capacity for good.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import threading
import time
import uuid
from collections import Counter, deque
from typing import TYPE_CHECKING, Any

import ray
from ray.actor import ActorHandle

from mipro_ray import telemetry
from mipro_ray.limiter import LimiterStats, LocalLimiter

if TYPE_CHECKING:  # the actor's process needs no LM client (and its imports)
    from mipro_ray.lm import LMConfig

logger = logging.getLogger(__name__)

NAMESPACE = "mipro_ray"
_REAP_INTERVAL_S = 5.0
LEASE_MARGIN_S = 5.0
"""Seconds a lease lives beyond the holder's HTTP timeout before it is reclaimed."""


def limiter_name(config: LMConfig) -> str:
    """The Ray actor name of an endpoint's limiter."""
    return f"mipro_ray_limiter:{config.endpoint_key()}"


class LimiterActor:
    """Async actor holding a `LocalLimiter` and the leases it granted."""

    def __init__(self, max_in_flight: int, rpm: int | None, tpm: int | None) -> None:
        self._limits = (max_in_flight, rpm, tpm)
        self._limiter = LocalLimiter(max_in_flight=max_in_flight, rpm=rpm, tpm=tpm)
        self._pending: dict[str, asyncio.Task[None]] = {}
        self._leases: dict[str, float] = {}
        self._reaper: asyncio.Task[None] | None = None
        self._name = str(ray.get_runtime_context().get_actor_name())

    def limits(self) -> tuple[int, int | None, int | None]:
        """Returns (max_in_flight, rpm, tpm)."""
        return self._limits

    async def acquire(self, lease: str, tokens: int, ttl_s: float, priority: int = 0) -> bool:
        """Waits for a slot and records ``lease``; False if the lease was released meanwhile."""
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().create_task(self._reap())
        task = asyncio.get_running_loop().create_task(
            self._limiter.acquire(tokens, priority=priority)
        )
        self._pending[lease] = task
        try:
            await task
        except asyncio.CancelledError:
            return False
        finally:
            self._pending.pop(lease, None)
            self._report()
        self._leases[lease] = time.monotonic() + ttl_s
        return True

    async def release(self, lease: str, tokens: int) -> None:
        """Ends a lease, or abandons its wait if it was not granted yet."""
        task = self._pending.pop(lease, None)
        if task is not None:
            task.cancel()
            return
        if self._leases.pop(lease, None) is not None:
            await self._limiter.release(tokens)
            self._report()

    def _report(self) -> None:
        stats = self._limiter.stats()
        telemetry.limiter_state(self._name, waiting=stats.waiting, in_flight=stats.in_flight)

    def stats(self) -> LimiterStats:
        """Counters of the limiter (in flight, peak, waiting, admitted)."""
        return self._limiter.stats()

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(_REAP_INTERVAL_S)
            now = time.monotonic()
            for lease in [k for k, deadline in self._leases.items() if deadline < now]:
                del self._leases[lease]
                logger.warning("reclaimed expired LM lease %s (its holder died or hung)", lease)
                await self._limiter.release(0)


_RemoteLimiter = ray.remote(LimiterActor)


def get_limiter_actor(
    config: LMConfig, *, max_in_flight: int | None = None, wait: bool = True
) -> ActorHandle[LimiterActor]:
    """Gets or creates the endpoint's limiter actor (detached, in the ``mipro_ray`` namespace).

    The first creator fixes the limits; a later caller asking for other limits gets the
    existing actor and a warning.

    Args:
        config: The endpoint.
        max_in_flight: The in-flight cap (default: ``config.max_concurrency``).
        wait: Wait until the actor runs and compare its limits. With False the call returns
            at once (creating the actor's process takes seconds; calls to it queue until it
            runs), and no limits are compared: call again with True to do that.
    """
    cap = max_in_flight if max_in_flight is not None else config.max_concurrency
    handle: Any = _RemoteLimiter.options(
        name=limiter_name(config),
        num_cpus=0,
        max_concurrency=100_000,
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
    ).remote(cap, config.rpm, config.tpm)
    if not wait:
        return handle  # type: ignore[no-any-return]
    existing: tuple[int, int | None, int | None] = ray.get(handle.limits.remote())
    if tuple(existing) != (cap, config.rpm, config.tpm):
        logger.warning(
            "the limiter of %s already runs with limits %s; asked for %s (kept the existing)",
            config.model,
            existing,
            (cap, config.rpm, config.tpm),
        )
    return handle  # type: ignore[no-any-return]


_REUSE_S = 2.0
"""How long a granted lease may serve further calls of the same client before it goes back
to the limiter actor (so the other processes waiting there get their turn)."""
_LINGER_S = 0.02
"""How long a freed lease waits for the client's next call before it goes back."""


class RayLimiter:
    """`Limiter` client of a `LimiterActor`, usable from any process of the cluster.

    Every actor call costs milliseconds of CPU on both sides (about 400 acquire-release cycles
    a second in all, measured on 2 cores), so the client saves them where it may: a release
    does not wait for the actor's answer, and, for an endpoint without RPM/TPM limits (the
    actor would not count a reused lease's calls), a freed lease serves the client's next call
    if one comes within `_LINGER_S` and the lease is younger than `_REUSE_S` (else it goes
    back to the actor), unless a call of a higher priority of this client waits at the actor.
    A lease's time-to-live at the actor covers that reuse. Call `aclose` when done (a
    lingering lease goes back then at the latest; when the event loop shuts down, too).

    Picklable: it holds the actor's name and looks the handle up lazily.
    """

    def __init__(self, name: str, *, ttl_s: float, reuse: bool = False) -> None:
        """Args: name: the actor name (`limiter_name`); ttl_s: lease time-to-live for one
        call; reuse: whether a freed lease may serve the next call (only without rate
        windows)."""
        self._name = name
        self._ttl_s = ttl_s
        self._reuse = reuse
        self._init_state()

    def _init_state(self) -> None:
        self._handle: Any = None
        self._held: deque[tuple[str, float]] = deque()  # leases in use: (lease, asked at)
        self._idle: deque[tuple[str, float, float]] = deque()  # (lease, asked at, freed at)
        self._tokens = 0  # tokens of reused calls, reported with the next release sent
        self._waiting: Counter[int] = Counter()  # acquires waiting at the actor, by priority
        self._flusher: asyncio.Task[None] | None = None
        self._actor_reuse: bool | None = None  # whether the actor has no RPM/TPM window
        self._sending: set[ray.ObjectRef[None]] = set()
        self._sending_lock = threading.Lock()

    @classmethod
    def for_config(cls, config: LMConfig) -> RayLimiter:
        """The client of ``config``'s endpoint limiter; a lease outlives one HTTP attempt."""
        return cls(
            limiter_name(config),
            ttl_s=config.timeout_s + LEASE_MARGIN_S,
            reuse=config.rpm is None and config.tpm is None,
        )

    def __getstate__(self) -> dict[str, object]:
        return {"_name": self._name, "_ttl_s": self._ttl_s, "_reuse": self._reuse}

    def __setstate__(self, state: dict[str, object]) -> None:
        self._name = str(state["_name"])
        ttl = state["_ttl_s"]
        self._ttl_s = float(ttl) if isinstance(ttl, int | float) else 0.0
        self._reuse = bool(state.get("_reuse", False))
        self._init_state()

    def _actor(self) -> Any:
        if self._handle is None:
            self._handle = ray.get_actor(self._name, namespace=NAMESPACE)
        return self._handle

    async def ready(self) -> None:
        """Waits until the limiter actor answers (its process may still be starting): the
        hand-over does before it switches, a trial actor's warm-up so its first call does
        not; raises ValueError if no such actor exists."""
        await self._read_limits()

    async def _read_limits(self) -> None:
        # Reuse needs the actor's limits (the first client to create it set them), not ours.
        _, rpm, tpm = await self._actor().limits.remote()
        self._actor_reuse = rpm is None and tpm is None

    async def acquire(self, tokens: int, *, priority: int = 0) -> None:
        """Waits for a cluster-wide slot (or reuses a freed one, see the class)."""
        if self._take_idle(priority):
            return
        lease = uuid.uuid4().hex
        actor = self._actor()
        asked = time.monotonic()  # the actor's deadline counts from later: conservative
        ttl = self._ttl_s + (_REUSE_S if self._reuse else 0.0)
        self._waiting[priority] += 1
        try:
            # No priority argument when 0: a limiter actor of an earlier version (detached, on
            # a long-lived cluster) takes none.
            extra = (priority,) if priority else ()
            granted = await actor.acquire.remote(lease, tokens, ttl, *extra)
        except asyncio.CancelledError:
            # The actor may grant the slot after we stop waiting: end the lease either way.
            self._send_release(lease, 0)
            raise
        finally:
            self._waiting[priority] -= 1
        if not granted:
            raise RuntimeError(f"limiter {self._name} abandoned lease {lease}")
        self._held.append((lease, asked))
        if self._reuse and self._actor_reuse is None:
            try:
                await self._read_limits()
            except BaseException:  # e.g. the call was cancelled: it will not release
                self._held.remove((lease, asked))
                self._send_release(lease, 0)
                raise

    def _take_idle(self, priority: int) -> bool:
        """Reuses the newest freed lease, unless a call of a higher priority waits."""
        if not self._idle or any(n and p > priority for p, n in self._waiting.items()):
            return False
        now = time.monotonic()
        while self._idle:
            lease, asked, _ = self._idle.pop()
            if now - asked < _REUSE_S:
                self._held.append((lease, asked))
                return True
            self._send_release(lease, 0)
        return False

    async def release(self, tokens: int) -> None:
        """Returns one slot held by this client (without waiting for the actor)."""
        if not self._held:
            return
        # Leases are interchangeable: the oldest goes, as it expires first at the actor;
        # keeping the later deadlines always covers the calls still running.
        oldest = min(range(len(self._held)), key=lambda i: self._held[i][1])
        lease, asked = self._held[oldest]
        del self._held[oldest]
        now = time.monotonic()
        if self._reuse and self._actor_reuse and now - asked < _REUSE_S:
            self._tokens += tokens
            self._idle.append((lease, asked, now))
            if self._flusher is None or self._flusher.done():
                self._flusher = asyncio.get_running_loop().create_task(self._flush_idle())
            return
        self._send_release(lease, tokens)

    async def _flush_idle(self) -> None:
        """Gives back leases that lingered `_LINGER_S` unused (all of them when cancelled,
        e.g. as the event loop shuts down)."""
        try:
            while self._idle:
                await asyncio.sleep(_LINGER_S)
                now = time.monotonic()
                keep: deque[tuple[str, float, float]] = deque()
                for lease, asked, freed in self._idle:
                    if now - freed >= _LINGER_S or now - asked >= _REUSE_S:
                        self._send_release(lease, 0)
                    else:
                        keep.append((lease, asked, freed))
                self._idle = keep
        finally:
            self._give_back_idle()

    def _give_back_idle(self) -> None:
        while self._idle:
            self._send_release(self._idle.popleft()[0], 0)

    def _send_release(self, lease: str, tokens: int) -> None:
        """Ends ``lease`` at the actor; a failure is logged (the lease expires anyway)."""
        ref = self._actor().release.remote(lease, tokens + self._tokens)
        self._tokens = 0
        with self._sending_lock:
            self._sending.add(ref)
        ref.future().add_done_callback(functools.partial(self._sent, ref))

    def _sent(self, ref: ray.ObjectRef[None], future: concurrent.futures.Future[None]) -> None:
        with self._sending_lock:
            self._sending.discard(ref)
        if not future.cancelled() and future.exception() is not None:
            logger.warning(
                "limiter %s: a release failed (%r); the lease expires on its own",
                self._name,
                future.exception(),
            )

    async def aclose(self) -> None:
        """Gives back lingering leases and waits until the actor has every release."""
        if self._flusher is not None and not self._flusher.done():
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
        self._give_back_idle()
        with self._sending_lock:
            sending = list(self._sending)
        await asyncio.gather(*sending, return_exceptions=True)  # failures: logged in _sent

    async def stats(self) -> LimiterStats:
        """The actor's counters."""
        stats: LimiterStats = await self._actor().stats.remote()
        return stats


class HandoverLimiter:
    """A `LocalLimiter` until the cluster's limiter exists, then that one (`RayLimiter`).

    A run that starts its own local Ray cluster works while the cluster starts (seconds on a
    small machine). Until then its driver is the endpoint's only client, so an in-process
    limiter with the same cap holds the provider's limit. `hand_over` moves the driver to the
    cluster limiter: an adopter on the owner's event loop waits until the cluster limiter
    answers (its actor's process may take seconds to start), takes a cluster lease for every
    slot held here (those calls are in flight) while calls go on locally, switches once every
    held slot has one, and only then sets `handed_over`; the caller waits for it before any other
    process may use the cluster limiter, so the cap holds throughout. After the switch new
    calls (and calls still queued here) take cluster slots; a release never waits for the
    adopter, which only waits for the cluster limiter, so nothing can wait in a circle.

    `hand_over` may be called once, from any thread. If the adopter fails (the cluster limiter
    is unreachable), `error` holds why and `handed_over` is set: the waiter must raise it.
    Call `aclose` when the owning loop stops using the limiter.
    """

    def __init__(self, local: LocalLimiter) -> None:
        """Args: local: the in-process limiter used until the hand-over."""
        self._local = local
        self._lock = threading.Lock()
        self._next: RayLimiter | None = None
        self._remote: RayLimiter | None = None
        self._held_local = 0  # slots acquired from the local limiter, not yet released
        self._adopted = 0  # cluster leases taken for them
        self._loop: asyncio.AbstractEventLoop | None = None
        self._adopter: asyncio.Task[None] | None = None
        self.handed_over = threading.Event()
        self.error: BaseException | None = None

    def hand_over(self, remote: RayLimiter) -> None:
        """Switches to ``remote`` (thread-safe); `handed_over` is set once it took effect."""
        with self._lock:
            if self._next is not None:
                raise RuntimeError("HandoverLimiter.hand_over may be called once")
            self._next = remote
            loop = self._loop
            if loop is None:  # never used: nothing to carry over
                self._remote = remote
                self.handed_over.set()
                return
        try:
            loop.call_soon_threadsafe(self._start_adopter, remote)
        except RuntimeError:  # the owner's loop closed meanwhile: it released everything
            with self._lock:
                self._remote = remote
            self.handed_over.set()

    def _start_adopter(self, remote: RayLimiter) -> None:
        self._adopter = asyncio.get_running_loop().create_task(self._adopt(remote))
        self._adopter.add_done_callback(self._adopted_all)

    def _adopted_all(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():  # the owner's loop ended; an error only if slots were held
            with self._lock:
                if self._held_local:
                    self.error = RuntimeError("the hand-over to the cluster limiter was cancelled")
        elif task.exception() is not None:
            self.error = task.exception()
        self.handed_over.set()  # on an error, the waiter raises it

    async def _adopt(self, remote: RayLimiter) -> None:
        """Waits until the cluster limiter answers (calls go on locally meanwhile: switching
        earlier would stall every call until its process started), takes (or gives back)
        cluster leases until every held local slot has one, then switches. Only this task
        touches the leases before the switch."""
        await remote.ready()
        while True:
            with self._lock:
                gap = self._held_local - self._adopted
                if gap == 0:
                    self._remote = remote
                    return
            if gap > 0:
                await remote.acquire(0)
                delta = 1
            else:  # held slots were released meanwhile
                await remote.release(0)
                delta = -1
            with self._lock:
                self._adopted += delta

    async def aclose(self) -> None:
        """The owner stops using the limiter (nothing is held): a running hand-over ends (it
        is cancelled if it still waits, and leases it took go back), and the cluster limiter's
        client is closed (`RayLimiter.aclose`)."""
        if self._adopter is not None:
            with self._lock:
                nothing_held = self._held_local == 0
            if nothing_held:  # nothing to carry over: do not wait for the cluster limiter
                self._adopter.cancel()
            await asyncio.wait({self._adopter})
        self.handed_over.set()
        if self._next is not None:
            with self._lock:  # leases a cancelled adopter took, if it did not switch
                orphans = self._adopted if self._remote is None else 0
                self._adopted -= orphans
            for _ in range(orphans):
                await self._next.release(0)
            await self._next.aclose()

    async def acquire(self, tokens: int, *, priority: int = 0) -> None:
        """A slot from the local limiter before the switch, from the cluster's after."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        if self._remote is None:
            await self._local.acquire(tokens, priority=priority)
            with self._lock:
                if self._remote is None:  # the adopter counts it (under the same lock)
                    self._held_local += 1
                    return
            await self._local.release(0)  # switched while we waited: not adopted, give back
        assert self._remote is not None
        await self._remote.acquire(tokens, priority=priority)

    async def release(self, tokens: int) -> None:
        """Returns a slot: a local one (and, after the switch, its cluster lease) or a cluster
        one. Slots are interchangeable: only the counts matter."""
        with self._lock:
            local = self._held_local > 0
            remote = self._remote
            if local:
                self._held_local -= 1
                if remote is not None:
                    self._adopted -= 1
        if local:
            await self._local.release(tokens)
            if remote is not None:
                await remote.release(0)
            return
        assert remote is not None, "release without a matching acquire"
        await remote.release(tokens)
