"""ResponseCache: keys, persistence, sharing between processes, failing safely."""

from __future__ import annotations

import logging
import multiprocessing
import sqlite3
from multiprocessing.context import ForkContext, SpawnContext
from pathlib import Path

import pytest

from mipro_ray._cache import ResponseCache
from mipro_ray.lm import LMConfig, LMRequest, LMResponse
from mipro_ray.prompt import ChatMessage

CONFIG = LMConfig(model="m", base_url="http://127.0.0.1:1/v1", api_key_env=None)
OTHER_MODEL = LMConfig(model="n", base_url="http://127.0.0.1:1/v1", api_key_env=None)


def _request(content: str = "hi", **kw: object) -> LMRequest:
    return LMRequest.model_validate(
        {"messages": (ChatMessage(role="user", content=content),), **kw}
    )


def _response(text: str) -> LMResponse:
    return LMResponse(text=text, prompt_tokens=3, completion_tokens=4, latency_s=0.5, cached=False)


def test_key_covers_everything_that_changes_the_answer() -> None:
    fmt = {"type": "json_object"}
    base = ResponseCache.key_for(CONFIG, _request(), sent_format=True)
    assert base == ResponseCache.key_for(CONFIG, _request(), sent_format=True)
    variants = [
        ResponseCache.key_for(CONFIG, _request("other"), sent_format=True),
        ResponseCache.key_for(CONFIG, _request(temperature=0.7), sent_format=True),
        ResponseCache.key_for(CONFIG, _request(rollout_id=1), sent_format=True),
        ResponseCache.key_for(CONFIG, _request(max_tokens=5), sent_format=True),
        ResponseCache.key_for(CONFIG, _request(response_format=fmt), sent_format=True),
        ResponseCache.key_for(
            CONFIG.model_copy(update={"model": "n"}), _request(), sent_format=True
        ),
    ]
    assert len({base, *variants}) == len(variants) + 1
    # A format that is not sent cannot change the answer.
    assert ResponseCache.key_for(CONFIG, _request(response_format=fmt), sent_format=False) == base


def test_entries_persist_across_instances(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "cache.sqlite3"
    first = ResponseCache(path=path)
    assert not path.exists()  # created on first use
    assert first.get("k") is None
    first.put("k", _response("stored"))
    first.close()
    second = ResponseCache(path=path)
    assert second.get("k") == _response("stored")
    assert second.get("missing") is None
    second.close()


def _writer(path: str, prefix: str, n: int) -> None:
    cache = ResponseCache(path=path)
    for i in range(n):
        cache.put(f"{prefix}{i}", _response(f"{prefix}{i}"))
        cache.get(f"{prefix}{i // 2}")
    cache.close()


def test_two_processes_write_concurrently_without_corruption(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite3"
    # fork when available: a spawned child would spend seconds re-importing the package.
    if "fork" in multiprocessing.get_all_start_methods():
        ctx: ForkContext | SpawnContext = multiprocessing.get_context("fork")
    else:
        ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(path), p, 150)) for p in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    cache = ResponseCache(path=path)
    for prefix in ("a", "b"):
        for i in range(150):
            hit = cache.get(f"{prefix}{i}")
            assert hit is not None and hit.text == f"{prefix}{i}"
    cache.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()


def test_unusable_directory_warns_once_and_continues(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache directory should be")
    cache = ResponseCache(path=blocker / "cache.sqlite3")
    with caplog.at_level(logging.WARNING, logger="mipro_ray._cache"):
        cache.put("k", _response("x"))
        assert cache.get("k") is None
        cache.put("k2", _response("y"))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(blocker) in warnings[0].getMessage()
    assert "continuing without caching" in warnings[0].getMessage()
    assert not cache.enabled


def test_corrupt_file_warns_and_continues(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "cache.sqlite3"
    path.write_bytes(b"this is not a sqlite database" * 100)
    cache = ResponseCache(path=path)
    with caplog.at_level(logging.WARNING, logger="mipro_ray._cache"):
        assert cache.get("k") is None
        cache.put("k", _response("x"))
    assert "cache.sqlite3" in caplog.text
    assert not cache.enabled
