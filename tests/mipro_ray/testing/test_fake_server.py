"""The fake OpenAI-compatible server: protocol, capacity cap, fault injection, stats, stop."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from mipro_ray.testing import FakeLLMServer, FakeRequest, fake_token_count


def _body(content: str = "hello", **extra: object) -> dict[str, object]:
    return {"model": "m", "messages": [{"role": "user", "content": content}], **extra}


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as srv:
        yield srv


def test_answers_like_openai_with_usage(server: FakeLLMServer) -> None:
    r = httpx.post(f"{server.base_url}/chat/completions", json=_body("hello world", top_p=0.5))
    assert r.status_code == 200
    data = r.json()
    assert data["choices"][0]["message"] == {"role": "assistant", "content": "echo: hello world"}
    assert data["usage"]["prompt_tokens"] == fake_token_count("hello world")
    assert data["usage"]["completion_tokens"] == fake_token_count("echo: hello world")
    models = httpx.get(f"{server.base_url}/models").json()
    assert models["data"][0]["id"] == "fake-model"
    [received] = server.received
    assert received.request_index == 0
    assert received.top_p == 0.5
    assert received.messages == [{"role": "user", "content": "hello world"}]
    assert (server.requests, server.completed, server.by_status) == (1, 1, {200: 1})


def test_custom_responder_and_bad_body() -> None:
    def responder(req: FakeRequest) -> str:
        return f"#{req.request_index} t={req.temperature}"

    with FakeLLMServer(responder=responder) as srv:
        r = httpx.post(f"{srv.base_url}/chat/completions", json=_body(temperature=0.3))
        assert r.json()["choices"][0]["message"]["content"] == "#0 t=0.3"
        bad = httpx.post(f"{srv.base_url}/chat/completions", content=b"{not json")
        assert bad.status_code == 400
        assert srv.by_status == {200: 1, 400: 1}


def test_api_key_is_checked() -> None:
    with FakeLLMServer(api_key="sekret") as srv:
        url = f"{srv.base_url}/chat/completions"
        assert httpx.post(url, json=_body()).status_code == 401
        ok = httpx.post(url, json=_body(), headers={"Authorization": "Bearer sekret"})
        assert ok.status_code == 200


async def test_cap_answers_429_with_retry_after() -> None:
    with FakeLLMServer(latency_s=0.3, max_concurrency=3, retry_after_s=2) as srv:
        async with httpx.AsyncClient(timeout=10) as client:
            results = await asyncio.gather(
                *(client.post(f"{srv.base_url}/chat/completions", json=_body()) for _ in range(8))
            )
        statuses = sorted(r.status_code for r in results)
        assert statuses == [200] * 3 + [429] * 5
        refused = [r for r in results if r.status_code == 429]
        assert all(r.headers["Retry-After"] == "2" for r in refused)
        assert srv.by_status == {200: 3, 429: 5}
        assert srv.completed == 3


async def test_sustains_64_concurrent_slow_requests() -> None:
    with FakeLLMServer(latency_s=0.3) as srv:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(timeout=10, limits=limits) as client:
            t0 = time.monotonic()
            results = await asyncio.gather(
                *(client.post(f"{srv.base_url}/chat/completions", json=_body()) for _ in range(64))
            )
            elapsed = time.monotonic() - t0
        assert all(r.status_code == 200 for r in results)
        assert srv.peak_in_flight == 64
        assert srv.in_flight == 0
        assert elapsed < 4.0  # served concurrently (serially: 19 s), not one after the other


def _statuses(srv: FakeLLMServer, n: int) -> list[int]:
    with httpx.Client() as client:
        return [
            client.post(f"{srv.base_url}/chat/completions", json=_body()).status_code
            for _ in range(n)
        ]


def test_failure_injection_is_deterministic_per_seed() -> None:
    runs = []
    for seed in (7, 7, 8):
        with FakeLLMServer(failure_rate=0.3, failure_statuses=(429, 503), seed=seed) as srv:
            runs.append(_statuses(srv, 60))
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    failures = [s for s in runs[0] if s != 200]
    assert 8 <= len(failures) <= 30
    assert set(failures) == {429, 503}


def test_fail_first_and_runtime_changes(server: FakeLLMServer) -> None:
    server.set_faults(fail_first=2, fail_status=503)
    assert _statuses(server, 3) == [503, 503, 200]
    server.set_faults(malformed_rate=1.0)
    r = httpx.post(f"{server.base_url}/chat/completions", json=_body())
    assert r.status_code == 200
    with pytest.raises(ValueError):
        r.json()
    server.set_faults(malformed_rate=0.0, supports_response_format=False)
    r = httpx.post(
        f"{server.base_url}/chat/completions", json=_body(response_format={"type": "json_object"})
    )
    assert r.status_code == 400
    assert "response_format" in r.json()["error"]["message"]
    assert server.faults.supports_response_format is False
    with pytest.raises(ValueError):
        server.set_faults(failure_rate=1.5)


def test_stats_reset(server: FakeLLMServer) -> None:
    _statuses(server, 3)
    server.reset_stats()
    assert (server.requests, server.completed, server.by_status, server.received) == (0, 0, {}, [])
    _statuses(server, 1)
    assert server.received[0].request_index == 0


def test_stop_cancels_hanging_requests_and_joins_thread() -> None:
    threads_before = threading.active_count()
    srv = FakeLLMServer(timeout_rate=1.0).start()
    errors: list[BaseException] = []

    def call() -> None:
        try:
            httpx.post(f"{srv.base_url}/chat/completions", json=_body(), timeout=30)
        except httpx.HTTPError as exc:
            errors.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    deadline = time.monotonic() + 5
    while srv.in_flight == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert srv.in_flight == 1
    t0 = time.monotonic()
    srv.stop()
    assert time.monotonic() - t0 < 5
    caller.join(timeout=5)
    assert not caller.is_alive()
    assert not srv.running
    assert threading.active_count() == threads_before
    srv.stop()  # idempotent


def test_cli_serves_until_terminated() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "mipro_ray.testing", "--latency", "0.01"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("base_url=http://127.0.0.1:")
        base_url = line.removeprefix("base_url=")
        r = httpx.post(f"{base_url}/chat/completions", json=_body("cli"))
        assert r.json()["choices"][0]["message"]["content"] == "echo: cli"
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 0, stderr
