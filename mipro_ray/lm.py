"""The async LM client: one chat completion per `LMRequest`, over OpenAI's HTTP API.

`LM.complete` does, in order: a cache lookup (a hit costs no HTTP call and no limiter slot);
the per-client concurrency cap and the optional shared `Limiter`; one ``POST
{base_url}/chat/completions`` with ``aiohttp``. Retries (exponential backoff with full jitter,
honouring ``Retry-After``) happen here, where they are counted in `Usage` and mapped to the
typed `LMError` tree. The wire format is OpenAI's chat completions, which hosted providers and
local servers (vLLM, llama.cpp, Ollama, ...) speak. Neither the ``openai`` SDK nor ``httpx``
is used: the SDK's import alone costs about a second of CPU in every trial process, and
httpx's connection pool checks every pooled connection on every request, which made the LM
client the largest CPU cost of a trial at 64 calls in flight on a 2-core machine.

The API key is read from the environment when the `LM` is created and is never
part of `LMConfig`, a repr, a log line or `Usage`.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import logging
import os
import random
import re
import time
import weakref
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, JsonValue

from mipro_ray._cache import CACHE_FILE_NAME, ResponseCache, default_cache_dir
from mipro_ray.errors import (
    ConfigError,
    LMError,
    LMRateLimitError,
    LMRequestError,
    LMServerError,
    LMTimeoutError,
)
from mipro_ray.limiter import Limiter
from mipro_ray.prompt import ChatMessage

__all__ = ["LM", "LMCall", "LMConfig", "LMObserver", "LMRequest", "LMResponse", "Usage"]

logger = logging.getLogger(__name__)

_OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
_JSON = {"Content-Type": "application/json"}
_NO_KEY_PLACEHOLDER = "no-key-required"
_DEFAULT_COMPLETION_ESTIMATE = 256
_SECONDS = re.compile(r"\d+(\.\d*)?")
_FORMAT_REJECTION = re.compile(r"response_format|json_schema|unsupported|not supported", re.I)


class LMConfig(BaseModel):
    """How to reach one model on one OpenAI-compatible endpoint.

    The API key is not a field: `LM` reads it from the environment variable named by
    ``api_key_env`` when it is created, so configs can be logged, pickled and persisted.

    Attributes:
        model: Model name sent to the endpoint.
        base_url: Endpoint base URL (``.../v1``); None = the OpenAI API.
        api_key_env: Name of the environment variable holding the key; None = the endpoint
            needs no key (a placeholder is sent).
        timeout_s: Timeout of one HTTP attempt.
        max_retries: Retries after the first attempt for retryable failures.
        backoff_base_s: First backoff ceiling; it doubles per retry (full jitter).
        backoff_max_s: Upper bound of the backoff ceiling.
        max_concurrency: Most requests in flight per client (per event loop).
        cache: Whether to use the on-disk response cache.
        cache_dir: Cache directory; None = ``$MIPRO_RAY_CACHE_DIR`` or ``~/.cache/mipro-ray``.
        structured_output: ``"auto"`` sends ``response_format`` and falls back to plain text
            if the endpoint rejects it; ``"json_schema"`` always sends it; ``"off"`` never.
        price_prompt_per_1m: USD per million prompt tokens (for `Usage.cost_usd`).
        price_completion_per_1m: USD per million completion tokens.
        rpm: Requests per minute allowed by the provider (for a shared limiter).
        tpm: Tokens per minute allowed by the provider (for a shared limiter).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(min_length=1)
    base_url: str | None = None
    api_key_env: str | None = Field(default="OPENAI_API_KEY", min_length=1)
    timeout_s: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=6, ge=0)
    backoff_base_s: float = Field(default=0.5, ge=0)
    backoff_max_s: float = Field(default=30.0, ge=0)
    max_concurrency: int = Field(default=16, ge=1)
    cache: bool = True
    cache_dir: str | None = None
    structured_output: Literal["auto", "json_schema", "off"] = "auto"
    price_prompt_per_1m: float | None = Field(default=None, ge=0)
    price_completion_per_1m: float | None = Field(default=None, ge=0)
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)

    def endpoint_key(self) -> str:
        """A stable id of (model, base URL), safe as a Ray actor or file name.

        Clients with equal keys share one provider rate limit and thus one limiter.
        """
        base = self.base_url if self.base_url is not None else _OPENAI_DEFAULT_BASE_URL
        base = base.rstrip("/")
        digest = hashlib.sha256(f"{self.model}\n{base}".encode()).hexdigest()[:12]
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", self.model)[:40]
        return f"{slug}-{digest}"


class LMRequest(BaseModel):
    """One chat completion request.

    Attributes:
        messages: The conversation.
        temperature: Sampling temperature; None = the endpoint default.
        top_p: Nucleus sampling; None = the endpoint default.
        max_tokens: Completion token limit; None = the endpoint default.
        response_format: OpenAI ``response_format`` (e.g. a ``json_schema`` object).
        rollout_id: Part of the cache key only, never sent: a new id forces a fresh sample.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    messages: tuple[ChatMessage, ...] = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    response_format: dict[str, JsonValue] | None = None
    rollout_id: str | int | None = None


class LMResponse(BaseModel):
    """The answer to one `LMRequest`.

    Attributes:
        text: The assistant message content ("" if the endpoint returned none).
        prompt_tokens: Prompt tokens reported by the endpoint.
        completion_tokens: Completion tokens reported by the endpoint.
        latency_s: Wall time of this call, retries and backoff included (a cache hit
            reports the lookup time).
        cached: Whether the answer came from the response cache.
    """

    model_config = ConfigDict(frozen=True)

    text: str
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    latency_s: float = Field(ge=0)
    cached: bool = False


class Usage(BaseModel):
    """Counters of one `LM` (or, merged, of many).

    Tokens and cost count only answers that came over the network; cache hits are free.

    Attributes:
        calls: Completed logical requests, cache hits included.
        cache_hits: Requests answered from the cache.
        http_requests: HTTP attempts (each retry and fallback is one).
        retries: Attempts repeated after a retryable failure.
        errors: Requests that finally failed, by `LMError.kind`.
        prompt_tokens: Prompt tokens of network answers.
        completion_tokens: Completion tokens of network answers.
        latency_s_total: Sum of `LMResponse.latency_s` over completed calls.
        latency_s_max: Largest `LMResponse.latency_s`.
        cost_usd: From the config prices (0 when no prices are set).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    calls: int = 0
    cache_hits: int = 0
    http_requests: int = 0
    retries: int = 0
    errors: dict[str, int] = Field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s_total: float = 0.0
    latency_s_max: float = 0.0
    cost_usd: float = 0.0

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    def merge(self, other: Usage) -> Usage:
        """Returns the sum of two usages (e.g. of several trial actors)."""
        errors = dict(self.errors)
        for kind, count in other.errors.items():
            errors[kind] = errors.get(kind, 0) + count
        return Usage(
            calls=self.calls + other.calls,
            cache_hits=self.cache_hits + other.cache_hits,
            http_requests=self.http_requests + other.http_requests,
            retries=self.retries + other.retries,
            errors=errors,
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            latency_s_total=self.latency_s_total + other.latency_s_total,
            latency_s_max=max(self.latency_s_max, other.latency_s_max),
            cost_usd=self.cost_usd + other.cost_usd,
        )

    def __add__(self, other: Usage) -> Usage:
        return self.merge(other)


@dataclass(frozen=True)
class LMCall:
    """One finished `LM.complete` call, as an observer sees it (never prompts or keys).

    Attributes:
        model: The config's model name.
        latency_s: Wall time of the call, retries included.
        prompt_tokens: Prompt tokens of a network answer (0 for hits and errors).
        completion_tokens: Completion tokens of a network answer.
        cached: Whether the response cache answered.
        error_kind: `LMError.kind` when the call finally failed, else None.
    """

    model: str
    latency_s: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False
    error_kind: str | None = None


LMObserver = Callable[[LMCall], None]
"""Called after every `LM.complete` call, in the caller's event loop (keep it fast)."""


@dataclass
class _Counters:
    """Mutable twin of `Usage`, updated in place by one `LM`."""

    calls: int = 0
    cache_hits: int = 0
    http_requests: int = 0
    retries: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s_total: float = 0.0
    latency_s_max: float = 0.0
    cost_usd: float = 0.0

    def add_call(self, response: LMResponse, cost_usd: float) -> None:
        self.calls += 1
        self.latency_s_total += response.latency_s
        self.latency_s_max = max(self.latency_s_max, response.latency_s)
        if response.cached:
            self.cache_hits += 1
        else:
            self.prompt_tokens += response.prompt_tokens
            self.completion_tokens += response.completion_tokens
            self.cost_usd += cost_usd

    def snapshot(self) -> Usage:
        return Usage(
            calls=self.calls,
            cache_hits=self.cache_hits,
            http_requests=self.http_requests,
            retries=self.retries,
            errors=dict(self.errors),
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            latency_s_total=self.latency_s_total,
            latency_s_max=self.latency_s_max,
            cost_usd=self.cost_usd,
        )


class _Secret:
    """Holds the API key so that it never shows up in a repr."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "_Secret('**********')"


@dataclass
class _LoopState:
    """What must be created inside the event loop that uses it."""

    client: aiohttp.ClientSession
    semaphore: asyncio.Semaphore
    closer: AsyncGenerator[None, None]


async def _close_at_loop_shutdown(client: aiohttp.ClientSession) -> AsyncGenerator[None, None]:
    """Closes ``client`` when its event loop shuts down, if `LM.aclose` did not.

    A started async generator is finalized by ``loop.shutdown_asyncgens()``, which
    ``asyncio.run`` calls before closing the loop: so an `LM` used under ``asyncio.run`` without
    ``aclose`` still closes its connections inside the loop (no "Unclosed client session").
    """
    try:
        yield
    finally:
        await client.close()


class _FormatRejected(Exception):
    """The endpoint refused ``response_format`` (internal: triggers the text fallback)."""


class LM:
    """Async client for one `LMConfig`.

    The ``aiohttp.ClientSession`` and the concurrency semaphore are created lazily in
    the running event loop (one per loop), so an `LM` built in one loop can be used in
    another. `LM` objects are not picklable; ship the `LMConfig` and build one per process.

    Args:
        config: The endpoint and policy.
        limiter: Optional admission control shared with other clients of the endpoint.
        observer: Optional callback after every call (e.g. `mipro_ray.telemetry`).
        priority: This client's calls wait in the limiter ahead of those of clients with a
            lower priority (the optimizer's preparation, on the run's critical path, uses 1).

    Raises:
        ConfigError: The environment variable named by ``config.api_key_env`` is not set.
    """

    def __init__(
        self,
        config: LMConfig,
        *,
        limiter: Limiter | None = None,
        observer: LMObserver | None = None,
        priority: int = 0,
    ) -> None:
        self.config = config
        self.limiter = limiter
        self.observer = observer
        self.priority = priority
        self._api_key = _Secret(_read_api_key(config))
        self._cache = (
            ResponseCache(path=default_cache_dir(config.cache_dir) / CACHE_FILE_NAME)
            if config.cache
            else None
        )
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = (
            weakref.WeakKeyDictionary()
        )
        self._structured: bool | None = True if config.structured_output == "json_schema" else None
        self._counters = _Counters()
        self._rng = random.Random()
        base = config.base_url if config.base_url is not None else _OPENAI_DEFAULT_BASE_URL
        self._url = base.rstrip("/") + "/chat/completions"

    def __repr__(self) -> str:
        return f"LM(model={self.config.model!r}, base_url={self.config.base_url!r})"

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("LM objects are not picklable; pickle the LMConfig and build an LM")

    @property
    def usage(self) -> Usage:
        """A snapshot of the counters since creation or the last `reset_usage`."""
        return self._counters.snapshot()

    def reset_usage(self) -> None:
        """Zeroes the usage counters."""
        self._counters = _Counters()

    @property
    def supports_structured_output(self) -> bool | None:
        """Whether the endpoint accepts ``response_format``: None until a request tells."""
        return self._structured

    async def aclose(self) -> None:
        """Closes the HTTP client of the running loop and the cache connection."""
        state = self._loops.pop(asyncio.get_running_loop(), None)
        if state is not None:
            await state.closer.aclose()
        if self._cache is not None:
            self._cache.close()

    async def complete(self, request: LMRequest) -> LMResponse:
        """Answers one request from the cache or the endpoint.

        Raises:
            LMRateLimitError, LMServerError, LMTimeoutError: Retries are exhausted.
            LMRequestError: The endpoint rejected the request or the key (not retried).
        """
        start = time.monotonic()
        send_format = self._will_send_format(request)
        hit = await self._cache_get(request, sent_format=send_format)
        if hit is not None:
            return self._serve_hit(hit, start)
        state = await self._loop_state()
        async with state.semaphore:
            try:
                try:
                    result = await self._with_retries(state.client, request, send_format)
                except _FormatRejected:
                    self._structured = False
                    send_format = False
                    logger.info(
                        "LM %s: the endpoint rejected response_format; sending plain "
                        "requests from now on",
                        self.config.model,
                    )
                    hit = await self._cache_get(request, sent_format=False)
                    if hit is not None:
                        return self._serve_hit(hit, start)
                    result = await self._with_retries(state.client, request, send_format)
            except LMError as exc:
                self._counters.errors[exc.kind] = self._counters.errors.get(exc.kind, 0) + 1
                self._observe(time.monotonic() - start, error_kind=exc.kind)
                raise
        text, prompt_tokens, completion_tokens = result
        response = LMResponse(
            text=text,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            latency_s=time.monotonic() - start,
            cached=False,
        )
        self._counters.add_call(response, self._cost(prompt_tokens, completion_tokens))
        self._observe(response.latency_s, tokens=(prompt_tokens, completion_tokens))
        await self._cache_put(request, response, sent_format=send_format)
        return response

    def _serve_hit(self, hit: LMResponse, start: float) -> LMResponse:
        response = hit.model_copy(update={"cached": True, "latency_s": time.monotonic() - start})
        self._counters.add_call(response, 0.0)
        self._observe(response.latency_s, cached=True)
        return response

    def _observe(
        self,
        latency_s: float,
        *,
        tokens: tuple[int, int] = (0, 0),
        cached: bool = False,
        error_kind: str | None = None,
    ) -> None:
        if self.observer is not None:
            self.observer(
                LMCall(self.config.model, latency_s, *tokens, cached=cached, error_kind=error_kind)
            )

    # -- internals ---------------------------------------------------------------------------

    def _will_send_format(self, request: LMRequest) -> bool:
        if request.response_format is None or self.config.structured_output == "off":
            return False
        return self._structured is not False

    async def _loop_state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is None:
            client = aiohttp.ClientSession(
                headers={"Authorization": f"Bearer {self._api_key.reveal()}"},
                timeout=aiohttp.ClientTimeout(total=self.config.timeout_s),
                connector=aiohttp.TCPConnector(limit=self.config.max_concurrency),
                raise_for_status=False,
            )
            closer = _close_at_loop_shutdown(client)
            await anext(closer)
            state = _LoopState(client, asyncio.Semaphore(self.config.max_concurrency), closer)
            self._loops[loop] = state
        return state

    async def _with_retries(
        self, client: aiohttp.ClientSession, request: LMRequest, send_format: bool
    ) -> tuple[str, int, int]:
        """Runs attempts until success or a final error.

        Returns:
            (text, prompt_tokens, completion_tokens).

        Raises:
            LMError: A non-retryable failure, or the last one once retries are used up.
            _FormatRejected: The endpoint refused ``response_format`` (``"auto"`` mode).
        """
        attempt = 0
        while True:
            try:
                result = await self._attempt(client, request, send_format=send_format)
            except LMError as exc:
                if not exc.retryable or attempt >= self.config.max_retries:
                    raise
                delay = self._backoff(attempt, exc.retry_after)
                attempt += 1
                self._counters.retries += 1
                logger.info(
                    "LM %s: %s (status %s); retry %d/%d in %.2f s",
                    self.config.model,
                    exc.kind,
                    exc.status,
                    attempt,
                    self.config.max_retries,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            if send_format and self._structured is None:
                self._structured = True
            return result

    async def _attempt(
        self, client: aiohttp.ClientSession, request: LMRequest, *, send_format: bool
    ) -> tuple[str, int, int]:
        """One HTTP attempt under the limiter; maps failures to `LMError`."""
        estimate = _estimate_tokens(request)
        used = 0
        if self.limiter is not None:
            await self.limiter.acquire(estimate, priority=self.priority)
        try:
            self._counters.http_requests += 1
            completion = await self._create(client, request, send_format=send_format)
            text, prompt_tokens, completion_tokens = self._read_completion(completion)
            used = prompt_tokens + completion_tokens
            return text, prompt_tokens, completion_tokens
        finally:
            if self.limiter is not None:
                await self.limiter.release(used)

    async def _create(
        self, client: aiohttp.ClientSession, request: LMRequest, *, send_format: bool
    ) -> object:
        """POSTs the request; returns the decoded JSON body of a 2xx answer."""
        model = self.config.model
        body: dict[str, object] = {
            "model": model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        }
        for name, value in (
            ("temperature", request.temperature),
            ("top_p", request.top_p),
            ("max_tokens", request.max_tokens),
        ):
            if value is not None:
                body[name] = value
        if send_format and request.response_format is not None:
            body["response_format"] = request.response_format
        try:
            async with client.post(self._url, data=json.dumps(body), headers=_JSON) as answer:
                content = await answer.read()
                reply = _Reply(answer.status, answer.reason or "", answer.headers, content)
        except asyncio.TimeoutError as exc:
            raise LMTimeoutError(
                f"{model} did not answer within {self.config.timeout_s} s", model=model
            ) from exc
        except aiohttp.ClientError as exc:
            raise LMServerError(
                f"cannot reach {self._endpoint()} for {model}: {exc!r}", model=model
            ) from exc
        if reply.status >= 400:
            if reply.status in (400, 422) and send_format and self._fallback_allowed(reply):
                raise _FormatRejected
            raise self._status_error(reply)
        try:
            return json.loads(content)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise LMServerError(
                f"{self._endpoint()} answered {model} with a body that is not valid JSON: "
                f"{content[:200]!r} ({exc})",
                model=model,
                status=reply.status,
            ) from exc

    def _read_completion(self, completion: object) -> tuple[str, int, int]:
        """Extracts (text, prompt_tokens, completion_tokens); a broken body is retryable."""
        model = self.config.model
        try:
            if not isinstance(completion, dict):
                raise TypeError(f"the body is a JSON {type(completion).__name__}, not an object")
            choices = completion.get("choices")
            if not choices:
                raise LMServerError(
                    f"{self._endpoint()} answered {model} with no choices", model=model, status=200
                )
            content = choices[0]["message"].get("content")
            if content is not None and not isinstance(content, str):
                raise TypeError(f"message content is a {type(content).__name__}, not a string")
            usage = completion.get("usage")
            prompt_tokens = int(usage.get("prompt_tokens") or 0) if usage else 0
            completion_tokens = int(usage.get("completion_tokens") or 0) if usage else 0
        except (AttributeError, KeyError, TypeError, ValueError, IndexError) as exc:
            raise LMServerError(
                f"{self._endpoint()} answered {model} with a malformed completion: {exc!r}",
                model=model,
                status=200,
            ) from exc
        if not usage:
            logger.debug("LM %s: the endpoint reported no token usage", model)
        return (content if content is not None else ""), prompt_tokens, completion_tokens

    def _fallback_allowed(self, answer: _Reply) -> bool:
        if self.config.structured_output != "auto":
            return False
        return _FORMAT_REJECTION.search(_error_text(answer)) is not None

    def _status_error(self, answer: _Reply) -> LMError:
        model, status = self.config.model, answer.status
        detail = _error_text(answer)[:300]
        retry_after = _retry_after(answer)
        where = f"{self._endpoint()} answered {model} with HTTP {status}"
        if status == 429:
            return LMRateLimitError(
                f"{where} (rate limited): {detail}",
                model=model,
                status=status,
                retry_after=retry_after,
            )
        if status == 408:
            return LMTimeoutError(f"{where}: {detail}", model=model, status=status)
        if status >= 500:
            return LMServerError(
                f"{where}: {detail}", model=model, status=status, retry_after=retry_after
            )
        if status in (401, 403):
            env = self.config.api_key_env
            hint = f"check the API key in ${env}" if env is not None else "the endpoint wants a key"
            return LMRequestError(f"{where}: {detail}; {hint}", model=model, status=status)
        return LMRequestError(
            f"{where}: {detail}; fix the request or the model name", model=model, status=status
        )

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        ceiling = min(self.config.backoff_max_s, self.config.backoff_base_s * 2.0**attempt)
        delay = self._rng.uniform(0.0, ceiling)
        return max(delay, retry_after) if retry_after is not None else delay

    def _cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        cfg = self.config
        cost = 0.0
        if cfg.price_prompt_per_1m is not None:
            cost += prompt_tokens * cfg.price_prompt_per_1m / 1e6
        if cfg.price_completion_per_1m is not None:
            cost += completion_tokens * cfg.price_completion_per_1m / 1e6
        return cost

    def _endpoint(self) -> str:
        return self.config.base_url if self.config.base_url is not None else "the OpenAI API"

    async def _cache_get(self, request: LMRequest, *, sent_format: bool) -> LMResponse | None:
        if self._cache is None:
            return None
        key = self._cache.key_for(self.config, request, sent_format=sent_format)
        return await asyncio.to_thread(self._cache.get, key)

    async def _cache_put(
        self, request: LMRequest, response: LMResponse, *, sent_format: bool
    ) -> None:
        if self._cache is None:
            return
        key = self._cache.key_for(self.config, request, sent_format=sent_format)
        await asyncio.to_thread(self._cache.put, key, response)


def _read_api_key(config: LMConfig) -> str:
    env = config.api_key_env
    if env is None:
        return _NO_KEY_PLACEHOLDER
    value = os.environ.get(env)
    if not value:
        raise ConfigError(
            f"environment variable {env} is not set: export the API key for model "
            f"{config.model!r} as {env}, or set api_key_env=None for an endpoint without keys"
        )
    return value


def _estimate_tokens(request: LMRequest) -> int:
    chars = sum(len(m.content) for m in request.messages)
    completion = (
        request.max_tokens if request.max_tokens is not None else _DEFAULT_COMPLETION_ESTIMATE
    )
    return chars // 4 + completion


@dataclass(frozen=True)
class _Reply:
    """What an error answer carried: status, headers and the body."""

    status: int
    reason: str
    headers: Mapping[str, str]
    body: bytes


def _error_text(answer: _Reply) -> str:
    """The endpoint's error message (never headers)."""
    try:
        body = json.loads(answer.body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return answer.body[:500].decode(errors="replace") or answer.reason
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            param = err.get("param")
            return f"{err['message']} (param: {param})" if param is not None else err["message"]
    return json.dumps(body)[:500]


def _retry_after(answer: _Reply) -> float | None:
    """Seconds from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    headers = answer.headers
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(float(millis) / 1000.0, 0.0)
        except ValueError:
            logger.debug("ignoring unparsable retry-after-ms header")
    value = headers.get("retry-after")
    if value is None:
        return None
    if _SECONDS.fullmatch(value.strip()):
        return max(float(value), 0.0)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        logger.debug("ignoring unparsable Retry-After header")
        return None
    return max(when.timestamp() - time.time(), 0.0)
