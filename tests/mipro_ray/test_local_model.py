"""The local SmolLM2 endpoint, driven through the official openai SDK as the LM client does."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from mipro_ray.bbc import BBC_LABELS, BBC_SIGNATURE
from mipro_ray.errors import ConfigError, LMServerError
from mipro_ray.lm import LM, LMRequest
from mipro_ray.local_model import (
    LocalModelServer,
    LocalModelSettings,
    local_lm_config,
    require_local_extra,
    translate_response_format,
)
from mipro_ray.prompt import parse_answer, render_messages, response_schema
from mipro_ray.signature import Signature

LABELS = ["business", "entertainment", "politics", "sport", "tech"]
TOPIC_SCHEMA = {
    "type": "object",
    "properties": {"topic": {"type": "string", "enum": LABELS}},
    "required": ["topic"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def server() -> Iterator[LocalModelServer]:
    """One running SmolLM2 endpoint for the module (loading the model takes a few seconds)."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed (pip install 'mipro-ray[local]')")
    with LocalModelServer() as running:
        yield running


@pytest.fixture
def client(server: LocalModelServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0) as sdk:
        yield sdk


@pytest.mark.local_model
def test_json_schema_response_is_a_valid_label(
    server: LocalModelServer, client: openai.OpenAI
) -> None:
    completion = client.chat.completions.create(
        model=server.model,
        messages=[
            {"role": "system", "content": "Classify the topic of the news headline."},
            {"role": "user", "content": "Headline: Chelsea beat Arsenal 2-1 in the cup final"},
        ],
        temperature=0.0,
        max_tokens=20,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": TOPIC_SCHEMA, "strict": True},
        },
    )
    answer = json.loads(completion.choices[0].message.content or "")
    assert answer["topic"] in LABELS
    assert completion.model == server.model
    assert completion.usage is not None
    assert completion.usage.prompt_tokens > 10
    assert 0 < completion.usage.completion_tokens <= 20


@pytest.mark.local_model
async def test_our_lm_client_gets_a_parsable_structured_answer(
    server: LocalModelServer, tmp_path: Path
) -> None:
    signature = Signature.parse(BBC_SIGNATURE)
    demos = [
        {"headline": "Shares in BP rise after record oil profits", "topic": "business"},
        {"headline": "Arsenal sign Spanish striker on loan", "topic": "sports"},
    ]
    messages = render_messages(
        signature,
        instruction="",
        demos=demos,
        inputs={"headline": "Labour unveils election manifesto"},
        structured=True,
    )
    config = local_lm_config(server.base_url).model_copy(update={"cache_dir": str(tmp_path)})
    lm = LM(config)
    try:
        request = LMRequest(
            messages=tuple(messages),
            temperature=0.0,
            max_tokens=30,
            response_format=response_schema(signature),
        )
        response = await lm.complete(request)
    finally:
        await lm.aclose()
    assert parse_answer(signature, response.text)["topic"] in BBC_LABELS
    assert response.completion_tokens > 0


@pytest.mark.local_model
def test_free_text_completion_and_models_route(
    server: LocalModelServer, client: openai.OpenAI
) -> None:
    completion = client.chat.completions.create(
        model=server.model,
        messages=[{"role": "user", "content": "Say hello."}],
        temperature=0.0,
        max_tokens=8,
    )
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason in {"stop", "length"}
    assert [m.id for m in client.models.list()] == [server.model]


@pytest.mark.local_model
def test_bad_requests_get_openai_style_400(server: LocalModelServer, client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="streaming is not supported"):
        client.chat.completions.create(
            model=server.model, messages=[{"role": "user", "content": "hi"}], stream=True
        )
    with pytest.raises(openai.BadRequestError, match="exceed context window"):
        client.chat.completions.create(
            model=server.model,
            messages=[{"role": "user", "content": "word " * 5000}],
            max_tokens=4,
        )
    reply = httpx.post(f"{server.base_url}/chat/completions", content=b"not json", timeout=10)
    assert reply.status_code == 400
    assert reply.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.local_model
def test_stop_ends_the_child_process(tmp_path: Path) -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed (pip install 'mipro-ray[local]')")
    srv = LocalModelServer(settings=LocalModelSettings(n_ctx=512), log_path=tmp_path / "s.log")
    base_url = srv.start()
    assert httpx.get(base_url.removesuffix("/v1") + "/health", timeout=5).status_code == 200
    srv.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(base_url.removesuffix("/v1") + "/health", timeout=5)
    with pytest.raises(ConfigError, match="not running"):
        _ = srv.base_url
    assert "serving smollm2-135m-instruct" in (tmp_path / "s.log").read_text()


@pytest.mark.local_model
def test_a_broken_model_file_fails_start_with_the_log(tmp_path: Path) -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed (pip install 'mipro-ray[local]')")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file")
    srv = LocalModelServer(settings=LocalModelSettings(model_path=bad, startup_timeout_s=60))
    with pytest.raises(LMServerError, match="exited with code"):
        srv.start()


def test_missing_extra_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, package=None: None)
    with pytest.raises(ConfigError, match=r"pip install 'mipro-ray\[local\]'"):
        require_local_extra()
    with pytest.raises(ConfigError, match=r"pip install 'mipro-ray\[local\]'"):
        LocalModelServer().start()


@pytest.mark.parametrize(
    ("response_format", "schema"),
    [
        (None, None),
        ({"type": "text"}, None),
        ({"type": "json_object"}, {}),
        ({"type": "json_object", "schema": TOPIC_SCHEMA}, TOPIC_SCHEMA),
        (
            {"type": "json_schema", "json_schema": {"name": "a", "schema": TOPIC_SCHEMA}},
            TOPIC_SCHEMA,
        ),
    ],
)
def test_openai_and_llama_cpp_response_formats_become_a_schema(
    response_format: object, schema: object
) -> None:
    assert translate_response_format(response_format) == schema


@pytest.mark.parametrize(
    "response_format",
    [{"type": "xml"}, {"type": "json_schema", "json_schema": {"name": "a"}}, "json"],
)
def test_unknown_response_formats_are_rejected(response_format: object) -> None:
    with pytest.raises(ValueError, match="response_format"):
        translate_response_format(response_format)
