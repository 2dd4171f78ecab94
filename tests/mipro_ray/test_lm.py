"""The LM client against a real fake HTTP server: retries, errors, cache, limits, usage."""

from __future__ import annotations

import asyncio
import logging
import pickle
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mipro_ray.errors import (
    ConfigError,
    LMRateLimitError,
    LMRequestError,
    LMServerError,
    LMTimeoutError,
)
from mipro_ray.limiter import LocalLimiter
from mipro_ray.lm import LM, LMConfig, LMRequest, Usage
from mipro_ray.prompt import ChatMessage
from mipro_ray.testing import FakeLLMServer, FakeRequest, fake_token_count

SECRET = "sk-test-0123456789-do-not-leak"
FORMAT: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {"name": "answer", "schema": {"type": "object"}},
}

MakeLM = Callable[..., LM]


def _req(content: str = "What is 2+2?", **kw: Any) -> LMRequest:
    messages = (
        ChatMessage(role="system", content="Answer briefly."),
        ChatMessage(role="user", content=content),
    )
    return LMRequest(messages=messages, **kw)


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as srv:
        yield srv


@pytest.fixture
async def make_lm(server: FakeLLMServer, tmp_path: Path) -> AsyncIterator[MakeLM]:
    """Builds LMs pointed at ``server`` with fast backoff; closes them after the test."""
    created: list[LM] = []

    def make(*, limiter: LocalLimiter | None = None, **overrides: Any) -> LM:
        fields: dict[str, Any] = {
            "model": "fake-model",
            "base_url": server.base_url,
            "api_key_env": None,
            "cache": False,
            "cache_dir": str(tmp_path / "cache"),
            "backoff_base_s": 0.01,
            "backoff_max_s": 0.05,
            "timeout_s": 5.0,
        }
        fields.update(overrides)
        lm = LM(LMConfig(**fields), limiter=limiter)
        created.append(lm)
        return lm

    yield make
    for lm in created:
        await lm.aclose()


async def test_success_returns_text_tokens_and_latency(
    server: FakeLLMServer, make_lm: MakeLM
) -> None:
    server.set_faults(latency_s=0.05)
    lm = make_lm()
    resp = await lm.complete(_req("hello", temperature=0.2, max_tokens=20, rollout_id=3))
    assert resp.text == "echo: hello"
    assert resp.prompt_tokens == fake_token_count("Answer briefly.\nhello")
    assert resp.completion_tokens == fake_token_count("echo: hello")
    assert resp.latency_s >= 0.05
    assert resp.cached is False
    [sent] = server.received
    assert sent.temperature == 0.2 and sent.max_tokens == 20 and sent.top_p is None
    assert "rollout_id" not in sent.body
    assert sent.messages[0] == {"role": "system", "content": "Answer briefly."}
    usage = lm.usage
    assert (usage.calls, usage.http_requests, usage.retries, usage.errors) == (1, 1, 0, {})
    assert usage.total_tokens == resp.prompt_tokens + resp.completion_tokens


async def test_empty_content_is_returned_as_empty_text(make_lm: MakeLM) -> None:
    with FakeLLMServer(responder=lambda r: "") as srv:
        lm = make_lm(base_url=srv.base_url)
        assert (await lm.complete(_req())).text == ""


async def test_429_is_retried_after_retry_after(server: FakeLLMServer, make_lm: MakeLM) -> None:
    server.set_faults(fail_first=1, fail_status=429, retry_after_s=0.4)
    lm = make_lm()
    t0 = time.monotonic()
    resp = await lm.complete(_req())
    assert time.monotonic() - t0 >= 0.4
    assert resp.text.startswith("echo:")
    assert server.by_status == {429: 1, 200: 1}
    assert (lm.usage.http_requests, lm.usage.retries, lm.usage.errors) == (2, 1, {})


async def test_5xx_is_retried(server: FakeLLMServer, make_lm: MakeLM) -> None:
    server.set_faults(fail_first=3, fail_status=502)
    lm = make_lm()
    await lm.complete(_req())
    assert server.by_status == {502: 3, 200: 1}
    assert lm.usage.retries == 3


@pytest.mark.parametrize(
    ("status", "error", "kind"),
    [(429, LMRateLimitError, "rate_limit"), (503, LMServerError, "server")],
)
async def test_gives_up_after_the_retry_budget(
    server: FakeLLMServer, make_lm: MakeLM, status: int, error: type[Exception], kind: str
) -> None:
    server.set_faults(fail_first=100, fail_status=status, retry_after_s=0.01)
    lm = make_lm(max_retries=2)
    with pytest.raises(error) as info:
        await lm.complete(_req())
    assert getattr(info.value, "status", None) == status
    assert getattr(info.value, "retryable", None) is True
    assert server.requests == 3
    assert lm.usage.errors == {kind: 1}
    assert (lm.usage.calls, lm.usage.retries) == (0, 2)


async def test_401_is_a_request_error_naming_the_key_variable(
    make_lm: MakeLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MIPRO_TEST_KEY", "wrong-key")
    with FakeLLMServer(api_key="right-key") as srv:
        lm = make_lm(base_url=srv.base_url, api_key_env="MIPRO_TEST_KEY")
        with pytest.raises(LMRequestError) as info:
            await lm.complete(_req())
        assert srv.requests == 1  # not retried
    assert info.value.status == 401
    assert info.value.retryable is False
    assert "$MIPRO_TEST_KEY" in str(info.value)
    assert "wrong-key" not in str(info.value)
    assert lm.usage.errors == {"request": 1}


async def test_timeout_raises_lm_timeout_error(server: FakeLLMServer, make_lm: MakeLM) -> None:
    server.set_faults(timeout_rate=1.0)
    lm = make_lm(timeout_s=0.2, max_retries=1)
    t0 = time.monotonic()
    with pytest.raises(LMTimeoutError):
        await lm.complete(_req())
    assert time.monotonic() - t0 < 2.0
    assert server.requests == 2
    assert lm.usage.errors == {"timeout": 1}


async def test_malformed_body_is_a_retryable_server_error(
    server: FakeLLMServer, make_lm: MakeLM
) -> None:
    server.set_faults(malformed_rate=1.0)
    lm = make_lm(max_retries=1)
    with pytest.raises(LMServerError) as info:
        await lm.complete(_req())
    assert info.value.retryable is True
    assert server.requests == 2
    server.set_faults(malformed_rate=0.5, seed=3)
    lm2 = make_lm(max_retries=10)
    results = await asyncio.gather(*(lm2.complete(_req(f"q{i}")) for i in range(10)))
    assert [r.text for r in results] == [f"echo: q{i}" for i in range(10)]
    assert lm2.usage.retries > 0


async def test_cache_serves_repeats_and_rollout_id_forces_a_new_sample(
    server: FakeLLMServer, make_lm: MakeLM
) -> None:
    lm = make_lm(cache=True)
    first = await lm.complete(_req(temperature=1.0))
    again = await lm.complete(_req(temperature=1.0))
    assert server.requests == 1
    assert again.cached is True and again.text == first.text
    await lm.complete(_req(temperature=1.0, rollout_id=1))
    assert server.requests == 2
    other = make_lm(cache=True)  # a new client (e.g. another actor) shares the file
    assert (await other.complete(_req(temperature=1.0))).cached is True
    assert server.requests == 2
    usage = lm.usage
    assert (usage.calls, usage.cache_hits, usage.http_requests) == (3, 1, 2)
    assert usage.prompt_tokens == server.prompt_tokens  # cache hits add no tokens


async def test_cache_false_bypasses_the_cache(server: FakeLLMServer, make_lm: MakeLM) -> None:
    lm = make_lm(cache=False)
    await lm.complete(_req())
    await lm.complete(_req())
    assert server.requests == 2
    assert lm.usage.cache_hits == 0


def test_missing_key_variable_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MIPRO_TEST_ABSENT_KEY", raising=False)
    config = LMConfig(model="m", api_key_env="MIPRO_TEST_ABSENT_KEY")
    with pytest.raises(ConfigError, match="MIPRO_TEST_ABSENT_KEY"):
        LM(config)


async def test_key_never_leaks(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, make_lm: MakeLM
) -> None:
    monkeypatch.setenv("MIPRO_TEST_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    with FakeLLMServer(api_key=SECRET, fail_first=1, fail_status=429) as srv:
        lm = make_lm(base_url=srv.base_url, api_key_env="MIPRO_TEST_KEY")
        await lm.complete(_req())
        assert srv.received[-1].authorization == f"Bearer {SECRET}"  # it is sent...
    assert "retry 1/" in caplog.text
    surfaces = [
        repr(lm.config),
        str(lm.config),
        lm.config.model_dump_json(),
        repr(lm),
        repr(vars(lm)),
        caplog.text,
        lm.usage.model_dump_json(),
    ]
    for surface in surfaces:  # ...and shown nowhere
        assert SECRET not in surface


async def test_structured_output_falls_back_and_remembers(
    server: FakeLLMServer, make_lm: MakeLM
) -> None:
    server.set_faults(supports_response_format=False)
    lm = make_lm(cache=True)
    assert lm.supports_structured_output is None
    resp = await lm.complete(_req(response_format=FORMAT))
    assert resp.text.startswith("echo:")
    assert server.by_status == {400: 1, 200: 1}
    assert lm.supports_structured_output is False
    await lm.complete(_req("second", response_format=FORMAT))
    assert server.requests == 3  # no second rejection
    assert [r.response_format is None for r in server.received] == [False, True, True]
    assert lm.usage.errors == {}
    # A fresh client learns it again, then finds the plain answer in the cache.
    fresh = make_lm(cache=True)
    assert (await fresh.complete(_req(response_format=FORMAT))).cached is True
    assert server.requests == 4


async def test_structured_output_is_sent_when_supported_and_never_when_off(
    server: FakeLLMServer, make_lm: MakeLM
) -> None:
    lm = make_lm()
    await lm.complete(_req(response_format=FORMAT))
    assert server.received[-1].response_format == FORMAT
    assert lm.supports_structured_output is True
    off = make_lm(structured_output="off")
    await off.complete(_req(response_format=FORMAT))
    assert server.received[-1].response_format is None
    server.set_faults(supports_response_format=False)
    strict = make_lm(structured_output="json_schema")
    with pytest.raises(LMRequestError, match="response_format"):
        await strict.complete(_req(response_format=FORMAT))


async def test_per_client_concurrency_cap(server: FakeLLMServer, make_lm: MakeLM) -> None:
    server.set_faults(latency_s=0.1)
    lm = make_lm(max_concurrency=4)
    await asyncio.gather(*(lm.complete(_req(f"q{i}")) for i in range(20)))
    assert server.peak_in_flight == 4
    assert server.completed == 20


async def test_shared_limiter_wraps_every_http_attempt(
    server: FakeLLMServer, make_lm: MakeLM
) -> None:
    server.set_faults(latency_s=0.05, fail_first=2, fail_status=500)
    limiter = LocalLimiter(max_in_flight=2)
    lm = make_lm(limiter=limiter, cache=True)
    await asyncio.gather(*(lm.complete(_req(f"q{i}")) for i in range(8)))
    await lm.complete(_req("q0"))  # cache hit: no slot taken
    assert server.peak_in_flight == 2
    assert limiter.total_acquired == server.requests == 10
    assert limiter.in_flight == 0
    assert limiter.stats().total_released_tokens == server.prompt_tokens + server.completion_tokens


async def test_usage_adds_up_after_mixed_failures(server: FakeLLMServer, make_lm: MakeLM) -> None:
    server.set_faults(failure_rate=0.3, failure_statuses=(429, 500, 503), seed=11)
    lm = make_lm(max_retries=20, price_prompt_per_1m=1.0, price_completion_per_1m=2.0)
    await asyncio.gather(*(lm.complete(_req(f"question {i}")) for i in range(50)))
    usage = lm.usage
    assert usage.calls == 50
    assert usage.http_requests == server.requests > 50
    assert usage.retries == usage.http_requests - 50
    assert usage.errors == {}
    assert usage.prompt_tokens == server.prompt_tokens
    assert usage.completion_tokens == server.completion_tokens
    expected_cost = (server.prompt_tokens * 1.0 + server.completion_tokens * 2.0) / 1e6
    assert usage.cost_usd == pytest.approx(expected_cost)
    assert 0 < usage.latency_s_max <= usage.latency_s_total
    lm.reset_usage()
    assert lm.usage == Usage()


def test_usage_merge_sums_counters() -> None:
    a = Usage(calls=2, errors={"server": 1}, prompt_tokens=10, latency_s_max=1.0, cost_usd=0.5)
    b = Usage(calls=3, errors={"server": 2, "timeout": 1}, completion_tokens=5, latency_s_max=2.0)
    total = a + b
    assert total == a.merge(b)
    assert (total.calls, total.errors, total.total_tokens) == (5, {"server": 3, "timeout": 1}, 15)
    assert total.latency_s_max == 2.0 and total.cost_usd == 0.5


def test_lm_works_across_event_loops_and_config_pickles(server: FakeLLMServer) -> None:
    config = LMConfig(model="fake-model", base_url=server.base_url, api_key_env=None, cache=False)
    assert pickle.loads(pickle.dumps(config)) == config
    assert (
        config.endpoint_key()
        == LMConfig(model="fake-model", base_url=server.base_url, api_key_env=None).endpoint_key()
    )
    assert config.endpoint_key() != LMConfig(model="fake-model").endpoint_key()
    lm = LM(config)

    async def one(text: str) -> str:
        try:
            return (await lm.complete(_req(text))).text
        finally:
            await lm.aclose()

    assert asyncio.run(one("a")) == "echo: a"
    assert asyncio.run(one("b")) == "echo: b"
    assert lm.usage.calls == 2
    with pytest.raises(TypeError, match="LMConfig"):
        pickle.dumps(lm)


def test_received_requests_are_fake_requests(server: FakeLLMServer) -> None:
    config = LMConfig(model="fake-model", base_url=server.base_url, api_key_env=None, cache=False)

    async def run() -> None:
        lm = LM(config)
        try:
            await lm.complete(_req("x", top_p=0.9))
        finally:
            await lm.aclose()

    asyncio.run(run())
    [sent] = server.received
    assert isinstance(sent, FakeRequest) and sent.top_p == 0.9
