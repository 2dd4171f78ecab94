"""A fake OpenAI-compatible chat completions server on loopback, for tests and benchmarks.

The server is real HTTP (aiohttp) running in a background thread with its own event loop, so
the real client code (HTTP, retries, timeouts) runs against it. Faults are
injected deterministically from ``seed`` and the request index, and can be changed while the
server runs with `FakeLLMServer.set_faults`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import random
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType

from aiohttp import web
from typing_extensions import Self, TypedDict, Unpack

__all__ = [
    "FakeLLMServer",
    "FakeRequest",
    "Faults",
    "default_responder",
    "fake_token_count",
    "main",
]

logger = logging.getLogger(__name__)

_HANG_S = 3600.0  # "timeout" faults sleep far beyond any client timeout (cut short by stop)


def fake_token_count(text: str) -> int:
    """The fake server's token count: one token per 4 characters, rounded up."""
    return (len(text) + 3) // 4


@dataclass(frozen=True)
class FakeRequest:
    """One parsed chat completions request as the server received it.

    Attributes:
        request_index: 0-based arrival order since start (or the last `reset_stats`).
        model: The requested model.
        messages: The messages as sent (``{"role": ..., "content": ...}`` dicts).
        temperature: Sampling temperature, if sent.
        top_p: Nucleus sampling parameter, if sent.
        max_tokens: Completion token limit, if sent.
        response_format: The ``response_format`` object, if sent.
        body: The whole JSON body.
        authorization: The ``Authorization`` header, if any.
    """

    request_index: int
    model: str
    messages: list[dict[str, str]]
    temperature: float | None
    top_p: float | None
    max_tokens: int | None
    response_format: dict[str, object] | None
    body: dict[str, object]
    authorization: str | None = field(default=None, repr=False)

    @property
    def prompt_text(self) -> str:
        """All message contents joined by newlines."""
        return "\n".join(m.get("content", "") for m in self.messages)


def default_responder(request: FakeRequest) -> str:
    """Answers ``"echo: <last user message>"``."""
    users = [m.get("content", "") for m in request.messages if m.get("role") == "user"]
    return f"echo: {users[-1] if users else ''}"


@dataclass(frozen=True)
class Faults:
    """Latency, capacity and fault injection of a `FakeLLMServer`.

    Every request draws its faults from ``random.Random(f"{seed}:{request_index}")``, so a
    given seed yields the same fault sequence on every run.

    Attributes:
        latency_s: Delay added to every answered request.
        max_concurrency: Requests beyond this many in flight get 429 (like a provider cap).
        failure_rate: Probability that a request fails with one of ``failure_statuses``.
        failure_statuses: Statuses drawn for random failures.
        seed: Seed of the per-request fault draws.
        retry_after_s: ``Retry-After`` sent with every 429 (cap 429s send 1 s when None).
        fail_first: The next N requests fail with ``fail_status`` (counts down).
        fail_status: Status of the ``fail_first`` failures.
        timeout_rate: Probability that a request hangs (about an hour, cut short by stop).
        malformed_rate: Probability of an HTTP 200 whose body is not valid JSON.
        supports_response_format: When False, a request with ``response_format`` gets 400.
    """

    latency_s: float = 0.0
    max_concurrency: int | None = None
    failure_rate: float = 0.0
    failure_statuses: tuple[int, ...] = (429, 500)
    seed: int = 0
    retry_after_s: float | None = None
    fail_first: int = 0
    fail_status: int = 500
    timeout_rate: float = 0.0
    malformed_rate: float = 0.0
    supports_response_format: bool = True

    def __post_init__(self) -> None:
        for name in ("failure_rate", "timeout_rate", "malformed_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {value}")
        if self.latency_s < 0:
            raise ValueError(f"latency_s must be >= 0, got {self.latency_s}")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {self.max_concurrency}")
        if not self.failure_statuses:
            raise ValueError("failure_statuses must not be empty")


class FaultChanges(TypedDict, total=False):
    """Keyword arguments accepted by `FakeLLMServer.set_faults` (any subset of `Faults`)."""

    latency_s: float
    max_concurrency: int | None
    failure_rate: float
    failure_statuses: tuple[int, ...]
    seed: int
    retry_after_s: float | None
    fail_first: int
    fail_status: int
    timeout_rate: float
    malformed_rate: float
    supports_response_format: bool


@dataclass
class _Stats:
    requests: int = 0
    completed: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    received: list[FakeRequest] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Reply(Exception):
    """Ends a request early with an error status (internal control flow)."""

    def __init__(self, status: int, message: str, *, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers) if headers is not None else {}


class FakeLLMServer:
    """An OpenAI-compatible ``/v1/chat/completions`` server on 127.0.0.1.

    Use it as a context manager (``with FakeLLMServer(...) as srv: srv.base_url``) or call
    `start` and `stop`. Statistics are thread-safe and readable while it runs.

    Args:
        responder: Maps a request to the answer text (default: `default_responder`).
        host: Interface to bind.
        port: Port to bind; 0 picks a free one.
        api_key: When set, requests without ``Authorization: Bearer <api_key>`` get 401.
        model_name: The model id listed by ``GET /v1/models``.
        latency_s, max_concurrency, failure_rate, failure_statuses, seed, retry_after_s,
        fail_first, fail_status, timeout_rate, malformed_rate, supports_response_format:
            The initial `Faults`.
    """

    def __init__(
        self,
        *,
        responder: Callable[[FakeRequest], str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        model_name: str = "fake-model",
        latency_s: float = 0.0,
        max_concurrency: int | None = None,
        failure_rate: float = 0.0,
        failure_statuses: Sequence[int] = (429, 500),
        seed: int = 0,
        retry_after_s: float | None = None,
        fail_first: int = 0,
        fail_status: int = 500,
        timeout_rate: float = 0.0,
        malformed_rate: float = 0.0,
        supports_response_format: bool = True,
    ) -> None:
        self._responder = responder if responder is not None else default_responder
        self._host = host
        self._requested_port = port
        self._api_key = api_key
        self.model_name = model_name
        self._lock = threading.Lock()
        self._faults = Faults(
            latency_s=latency_s,
            max_concurrency=max_concurrency,
            failure_rate=failure_rate,
            failure_statuses=tuple(failure_statuses),
            seed=seed,
            retry_after_s=retry_after_s,
            fail_first=fail_first,
            fail_status=fail_status,
            timeout_rate=timeout_rate,
            malformed_rate=malformed_rate,
            supports_response_format=supports_response_format,
        )
        self._fail_remaining = fail_first
        self._stats = _Stats()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._port: int | None = None
        self._startup_error: BaseException | None = None

    def __repr__(self) -> str:
        where = self.base_url if self._port is not None else "not started"
        return f"FakeLLMServer({where})"

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Self:
        """Binds the port and starts serving in a background thread; returns self."""
        if self._thread is not None:
            raise RuntimeError("FakeLLMServer is already running")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self._host, self._requested_port))
            sock.listen(1024)
        except OSError:
            sock.close()
            raise
        self._port = int(sock.getsockname()[1])
        ready = threading.Event()
        self._startup_error = None
        self._thread = threading.Thread(
            target=self._run, args=(sock, ready), name=f"FakeLLMServer:{self._port}", daemon=True
        )
        self._thread.start()
        ready.wait()
        if self._startup_error is not None:
            self._thread.join()
            self._thread = None
            raise RuntimeError("FakeLLMServer failed to start") from self._startup_error
        return self

    def stop(self) -> None:
        """Stops serving, cancels hanging requests and joins the thread (idempotent)."""
        thread, loop, stop_event = self._thread, self._loop, self._stop_event
        if thread is None:
            return
        if loop is not None and stop_event is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stop_event.set)
            except RuntimeError:  # the loop closed between the check and the call
                logger.debug("FakeLLMServer loop already closed")
        thread.join(timeout=30)
        if thread.is_alive():
            raise RuntimeError("FakeLLMServer thread did not stop within 30 s")
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port (after `start`)."""
        if self._port is None:
            raise RuntimeError("FakeLLMServer is not started")
        return self._port

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, e.g. ``http://127.0.0.1:8123/v1``."""
        return f"http://{self._host}:{self.port}/v1"

    @property
    def running(self) -> bool:
        """Whether the server thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    # -- faults ----------------------------------------------------------------------------

    @property
    def faults(self) -> Faults:
        """The current fault settings."""
        with self._lock:
            return self._faults

    def set_faults(self, **changes: Unpack[FaultChanges]) -> None:
        """Changes some fault settings; takes effect for requests received afterwards.

        Setting ``fail_first=N`` makes the next N requests fail with ``fail_status``.
        """
        with self._lock:
            self._faults = dataclasses.replace(self._faults, **changes)
            if "fail_first" in changes:
                self._fail_remaining = self._faults.fail_first

    # -- stats -----------------------------------------------------------------------------

    @property
    def requests(self) -> int:
        """Chat completion requests received."""
        with self._lock:
            return self._stats.requests

    @property
    def completed(self) -> int:
        """Requests answered with a valid completion."""
        with self._lock:
            return self._stats.completed

    @property
    def in_flight(self) -> int:
        """Requests being processed right now."""
        with self._lock:
            return self._stats.in_flight

    @property
    def peak_in_flight(self) -> int:
        """Most requests in flight at once (including those refused by the cap)."""
        with self._lock:
            return self._stats.peak_in_flight

    @property
    def by_status(self) -> dict[int, int]:
        """Responses sent, by HTTP status (a copy)."""
        with self._lock:
            return dict(self._stats.by_status)

    @property
    def received(self) -> list[FakeRequest]:
        """Every parsed request, in arrival order (a copy)."""
        with self._lock:
            return list(self._stats.received)

    @property
    def prompt_tokens(self) -> int:
        """Prompt tokens reported in valid completions."""
        with self._lock:
            return self._stats.prompt_tokens

    @property
    def completion_tokens(self) -> int:
        """Completion tokens reported in valid completions."""
        with self._lock:
            return self._stats.completion_tokens

    def reset_stats(self) -> None:
        """Zeroes the counters and the request index (requests in flight stay counted)."""
        with self._lock:
            in_flight = self._stats.in_flight
            self._stats = _Stats(in_flight=in_flight, peak_in_flight=in_flight)

    # -- serving ---------------------------------------------------------------------------

    def _run(self, sock: socket.socket, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve(sock, ready))
        except BaseException as exc:
            self._startup_error = exc
            ready.set()
            if not isinstance(exc, Exception):
                raise
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                self._loop = None
                self._stop_event = None
                loop.close()
                sock.close()

    async def _serve(self, sock: socket.socket, ready: threading.Event) -> None:
        self._stop_event = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._handle_chat)
        app.router.add_get("/v1/models", self._handle_models)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        try:
            site = web.SockSite(runner, sock, shutdown_timeout=1.0, backlog=1024)
            await site.start()
            ready.set()
            await self._stop_event.wait()
        finally:
            await runner.cleanup()

    async def _sleep(self, delay: float) -> None:
        """Sleeps ``delay`` seconds, or until the server stops (then the request is dropped)."""
        if delay <= 0:
            return
        assert self._stop_event is not None
        try:
            await asyncio.wait_for(self._stop_event.wait(), timeout=delay)
        except asyncio.TimeoutError:
            return
        raise _Reply(503, "server is shutting down")

    async def _handle_models(self, request: web.Request) -> web.Response:
        data = {"object": "list", "data": [{"id": self.model_name, "object": "model"}]}
        return web.json_response(data)

    async def _handle_chat(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            index = self._stats.requests
            self._stats.requests += 1
            faults = self._faults
            refused = (
                faults.max_concurrency is not None
                and self._stats.in_flight >= faults.max_concurrency
            )
            fail_first = not refused and self._fail_remaining > 0
            if fail_first:
                self._fail_remaining -= 1
            self._stats.in_flight += 1
            self._stats.peak_in_flight = max(self._stats.peak_in_flight, self._stats.in_flight)
        status: int | None = None
        try:
            if refused:
                retry_after = faults.retry_after_s if faults.retry_after_s is not None else 1.0
                raise _Reply(
                    429,
                    f"too many concurrent requests (limit {faults.max_concurrency})",
                    headers={"Retry-After": _format_seconds(retry_after)},
                )
            response = await self._answer(request, index, faults, fail_first=fail_first)
            status = response.status
            return response
        except _Reply as reply:
            status = reply.status
            return _error_response(reply)
        except Exception:
            status = 500  # a responder bug: aiohttp answers 500 and logs the traceback
            raise
        finally:
            with self._lock:
                self._stats.in_flight -= 1
                if status is not None:  # None: the client went away (handler cancelled)
                    self._stats.by_status[status] = self._stats.by_status.get(status, 0) + 1

    async def _answer(
        self, request: web.Request, index: int, faults: Faults, *, fail_first: bool
    ) -> web.Response:
        if self._api_key is not None:
            expected = f"Bearer {self._api_key}"
            if request.headers.get("Authorization") != expected:
                raise _Reply(401, "Incorrect API key provided.")
        fake = _parse_request(await request.read(), index, request.headers.get("Authorization"))
        with self._lock:
            self._stats.received.append(fake)
        rng = random.Random(f"{faults.seed}:{index}")
        fail_draw, status_draw, hang_draw, malformed_draw = (rng.random() for _ in range(4))
        if fail_first or fail_draw < faults.failure_rate:
            failure = (
                faults.fail_status
                if fail_first
                else faults.failure_statuses[int(status_draw * len(faults.failure_statuses))]
            )
            headers = {}
            if failure == 429 and faults.retry_after_s is not None:
                headers["Retry-After"] = _format_seconds(faults.retry_after_s)
            await self._sleep(faults.latency_s)
            raise _Reply(failure, f"injected failure {failure}", headers=headers)
        if hang_draw < faults.timeout_rate:
            await self._sleep(_HANG_S)
        if fake.response_format is not None and not faults.supports_response_format:
            raise _Reply(400, "response_format json_schema is not supported by this model")
        await self._sleep(faults.latency_s)
        if malformed_draw < faults.malformed_rate:
            return web.Response(
                status=200,
                text='{"id": "chatcmpl-broken", "choices": [',
                content_type="application/json",
            )
        text = self._responder(fake)
        prompt_tokens = fake_token_count(fake.prompt_text)
        completion_tokens = fake_token_count(text)
        with self._lock:
            self._stats.completed += 1
            self._stats.prompt_tokens += prompt_tokens
            self._stats.completion_tokens += completion_tokens
        return web.json_response(
            _completion_body(index, fake.model, text, prompt_tokens, completion_tokens)
        )


def _parse_request(raw: bytes, index: int, authorization: str | None) -> FakeRequest:
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise _Reply(400, f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise _Reply(400, "request body must be a JSON object")
    messages = body.get("messages")
    model = body.get("model")
    if not isinstance(messages, list) or not isinstance(model, str):
        raise _Reply(400, "'model' (string) and 'messages' (array) are required")
    parsed: list[dict[str, str]] = []
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise _Reply(400, "each message needs a string 'content'")
        parsed.append({str(k): str(v) for k, v in m.items()})
    fmt = body.get("response_format")
    return FakeRequest(
        request_index=index,
        model=model,
        messages=parsed,
        temperature=_opt_float(body.get("temperature")),
        top_p=_opt_float(body.get("top_p")),
        max_tokens=_opt_int(body.get("max_tokens")),
        response_format=fmt if isinstance(fmt, dict) else None,
        body=body,
        authorization=authorization,
    )


def _opt_float(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _opt_int(value: object) -> int | None:
    return int(value) if isinstance(value, int) else None


def _format_seconds(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


def _completion_body(
    index: int, model: str, text: str, prompt_tokens: int, completion_tokens: int
) -> dict[str, object]:
    return {
        "id": f"chatcmpl-fake-{index}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _error_response(reply: _Reply) -> web.Response:
    kind = {
        400: "invalid_request_error",
        401: "authentication_error",
        429: "rate_limit_error",
    }.get(reply.status, "server_error")
    body = {"error": {"message": reply.message, "type": kind, "param": None, "code": None}}
    return web.json_response(body, status=reply.status, headers=reply.headers)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs a `FakeLLMServer` in the foreground until SIGINT/SIGTERM.

    Prints ``base_url=http://127.0.0.1:PORT/v1`` on stdout once it is listening.
    """
    parser = argparse.ArgumentParser(
        prog="python -m mipro_ray.testing", description="Fake OpenAI-compatible LLM server."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per request")
    parser.add_argument("--max-concurrency", type=int, default=None)
    parser.add_argument("--failure-rate", type=float, default=0.0)
    parser.add_argument("--timeout-rate", type=float, default=0.0)
    parser.add_argument("--malformed-rate", type=float, default=0.0)
    parser.add_argument("--retry-after", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--api-key", default=None, help="require this bearer token")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    stop = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    server = FakeLLMServer(
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        latency_s=args.latency,
        max_concurrency=args.max_concurrency,
        failure_rate=args.failure_rate,
        timeout_rate=args.timeout_rate,
        malformed_rate=args.malformed_rate,
        retry_after_s=args.retry_after,
        seed=args.seed,
    )
    with server:
        sys.stdout.write(f"base_url={server.base_url}\n")
        sys.stdout.flush()
        while not stop.wait(0.5):
            pass
        logger.info("stopping after %d requests (%s)", server.requests, server.by_status)
    return 0
