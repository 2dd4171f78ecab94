"""Custom Ray metrics of mipro-ray, for the Ray dashboard's metrics view and Prometheus.

Every process of the cluster records into `ray.util.metrics`; each node's metrics agent serves
them on its Prometheus endpoint (``ray start --metrics-export-port``), where Ray prefixes the
names with ``ray_``:

| metric | type | tags | recorded by |
|---|---|---|---|
| ``mipro_llm_calls`` | counter | model, cached | every LM call (see below) |
| ``mipro_llm_errors`` | counter | model, kind | LM calls that finally failed |
| ``mipro_llm_tokens`` | counter | model, type (prompt/completion) | network answers |
| ``mipro_llm_latency_seconds`` | histogram | model | every answered call |
| ``mipro_trials_started`` | counter | kind | the run's driver, as it hands a trial out |
| ``mipro_trials_finished`` | counter | kind | the driver, for trials that scored |
| ``mipro_trials_failed`` | counter | kind | the driver, for failed or crashed trials |
| ``mipro_best_score`` | gauge | run, kind (full/minibatch) | the run's driver |
| ``mipro_limiter_waiting`` | gauge | limiter | the endpoint's limiter actor |
| ``mipro_limiter_in_flight`` | gauge | limiter | the endpoint's limiter actor |

Outside a Ray worker or driver (``ray.is_initialized()`` is false) recording is a no-op, so the
LM core keeps working without a cluster. Ray pushes a process's metrics to its node every few
seconds, and a process that is killed loses what it recorded since its last push. Tune kills
its trial actors at the end of a run, so trial actors record nothing themselves: each trial
reports its LM calls in its outcome, and the run's driver, which outlives them, records them
(`record_lm_calls`). The driver records its own calls (bootstrap, proposals) as they happen.
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, ParamSpec

import ray
from ray.util.metrics import Counter, Gauge, Histogram

if TYPE_CHECKING:  # the limiter actor records metrics without importing the LM client
    from mipro_ray.lm import LMCall

logger = logging.getLogger(__name__)
_P = ParamSpec("_P")

_LATENCY_BOUNDARIES = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]


class _Metrics:
    """The metric objects of one process (created on first use, after Ray is initialized)."""

    def __init__(self) -> None:
        self.llm_calls = Counter(
            "mipro_llm_calls",
            description="LLM calls answered (cache hits included; see the 'cached' tag)",
            tag_keys=("model", "cached"),
        )
        self.llm_errors = Counter(
            "mipro_llm_errors",
            description="LLM calls that failed after retries, by error kind",
            tag_keys=("model", "kind"),
        )
        self.llm_tokens = Counter(
            "mipro_llm_tokens",
            description="Tokens of network answers (prompt or completion)",
            tag_keys=("model", "type"),
        )
        self.llm_latency = Histogram(
            "mipro_llm_latency_seconds",
            description="Wall time of an LLM call, retries included",
            boundaries=_LATENCY_BOUNDARIES,
            tag_keys=("model",),
        )
        self.trials_started = Counter(
            "mipro_trials_started", description="Search trials handed out", tag_keys=("kind",)
        )
        self.trials_finished = Counter(
            "mipro_trials_finished", description="Search trials that scored", tag_keys=("kind",)
        )
        self.trials_failed = Counter(
            "mipro_trials_failed",
            description="Search trials that failed (error budget, crash, raised)",
            tag_keys=("kind",),
        )
        self.best_score = Gauge(
            "mipro_best_score",
            description="Best score so far of a run (full validation or minibatch)",
            tag_keys=("run", "kind"),
        )
        self.limiter_waiting = Gauge(
            "mipro_limiter_waiting",
            description="LLM requests queued in an endpoint's cluster-wide limiter",
            tag_keys=("limiter",),
        )
        self.limiter_in_flight = Gauge(
            "mipro_limiter_in_flight",
            description="LLM requests admitted by an endpoint's limiter and not yet finished",
            tag_keys=("limiter",),
        )


_metrics: _Metrics | None = None
_lock = threading.Lock()


def _never_raises(func: Callable[_P, None]) -> Callable[_P, None]:
    """Recording metrics must never break what records them (an LM call, the search's
    bookkeeping, the limiter): a failure is logged, not raised."""

    @functools.wraps(func)
    def record(*args: _P.args, **kwargs: _P.kwargs) -> None:
        try:
            func(*args, **kwargs)
        except Exception:
            logger.warning("could not record %s in the Ray metrics", func.__name__, exc_info=True)

    return record


def _get() -> _Metrics | None:
    global _metrics
    if not ray.is_initialized():
        return None
    with _lock:
        if _metrics is None:
            _metrics = _Metrics()
        return _metrics


@_never_raises
def record_lm_call(call: LMCall) -> None:
    """Records one LM call; pass it as ``LM(config, observer=record_lm_call)``."""
    if call.error_kind is not None:
        record_lm_calls(call.model, error_kinds=[call.error_kind])
        return
    record_lm_calls(
        call.model,
        calls=1,
        cache_hits=1 if call.cached else 0,
        prompt_tokens=call.prompt_tokens,
        completion_tokens=call.completion_tokens,
        latencies_s=[call.latency_s],
    )


@_never_raises
def record_lm_calls(
    model: str,
    *,
    calls: int = 0,
    cache_hits: int = 0,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    latencies_s: Sequence[float] = (),
    error_kinds: Sequence[str] = (),
) -> None:
    """Records LM calls made elsewhere (by a trial, reported in its outcome).

    Args:
        model: The config's model name.
        calls: Answered calls, cache hits included.
        cache_hits: Of those, answered from the cache (they carry no tokens).
        prompt_tokens: Prompt tokens of the network answers.
        completion_tokens: Completion tokens of the network answers.
        latencies_s: The wall time of each answered call.
        error_kinds: The `LMError.kind` of each call that finally failed.
    """
    m = _get()
    if m is None:
        return
    if calls > cache_hits:
        m.llm_calls.inc(float(calls - cache_hits), {"model": model, "cached": "false"})
    if cache_hits:
        m.llm_calls.inc(float(cache_hits), {"model": model, "cached": "true"})
    for latency in latencies_s:
        m.llm_latency.observe(latency, {"model": model})
    if prompt_tokens:
        m.llm_tokens.inc(float(prompt_tokens), {"model": model, "type": "prompt"})
    if completion_tokens:
        m.llm_tokens.inc(float(completion_tokens), {"model": model, "type": "completion"})
    for kind, count in collections.Counter(error_kinds).items():
        m.llm_errors.inc(float(count), {"model": model, "kind": kind})


@_never_raises
def trial_started(kind: str) -> None:
    """A search trial of ``kind`` (baseline, minibatch, full) started."""
    m = _get()
    if m is not None:
        m.trials_started.inc(1.0, {"kind": kind})


@_never_raises
def trial_ended(kind: str, *, failed: bool) -> None:
    """A search trial scored (or failed)."""
    m = _get()
    if m is not None:
        (m.trials_failed if failed else m.trials_finished).inc(1.0, {"kind": kind})


@_never_raises
def best_score(run: str, kind: str, score: float | None) -> None:
    """The best ``kind`` score (``full`` or ``minibatch``) of run ``run`` so far."""
    m = _get()
    if m is not None and score is not None:
        m.best_score.set(score, {"run": run, "kind": kind})


@_never_raises
def limiter_state(limiter: str, *, waiting: int, in_flight: int) -> None:
    """Queue length and requests in flight of an endpoint's limiter."""
    m = _get()
    if m is not None:
        m.limiter_waiting.set(float(waiting), {"limiter": limiter})
        m.limiter_in_flight.set(float(in_flight), {"limiter": limiter})
