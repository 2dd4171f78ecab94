"""Tests for prompt rendering, answer formatting and answer parsing."""

from __future__ import annotations

import json

import pytest
from pydantic import JsonValue

from mipro_ray.errors import DatasetError, ParseError
from mipro_ray.prompt import (
    ChatMessage,
    format_answer,
    parse_answer,
    render_messages,
    response_schema,
)
from mipro_ray.signature import Prediction, Signature

TOPIC = Signature.parse('text "A news headline" -> topic:class "sports, politics, science"')

# One output field per type (and list variant), with a value of that type.
TYPED_CASES: list[tuple[str, JsonValue]] = [
    ("out:string", "Paris is the capital.\nIt is in France."),
    ("out:number", 42),
    ("out:number", -3.25),
    ("out:boolean", True),
    ("out:boolean", False),
    ('out:class "red, green, light blue"', "light blue"),
    ("out:json", {"a": [1, 2, {"b": None}], "c": "x, y"}),
    ("out:json", "just a string"),
    ("out:date", "2024-05-01"),
    ("out:datetime", "2024-05-01T10:30:00Z"),
    ("out:code", "def f(x):\n    return x + 1"),
    ("out:url", "https://example.com/a?b=c"),
    ("out:string[]", ["a, with comma", "b"]),
    ("out:number[]", [1, 2.5, -3]),
    ("out:boolean[]", [True, False]),
    ('out:class[] "red, green"', ["green", "red"]),
    ("out:json[]", [{"k": 1}, "s", 3]),
    ("out:date[]", ["2024-01-01", "2024-12-31"]),
    ("out:code[]", ["x = 1", "print(x)"]),
    ("out:url[]", ["https://a.example", "https://b.example"]),
]


@pytest.mark.parametrize("structured", [False, True])
@pytest.mark.parametrize(("spec", "value"), TYPED_CASES)
def test_format_then_parse_round_trips_every_type(
    spec: str, value: JsonValue, structured: bool
) -> None:
    sig = Signature.parse(f"question -> reasoning!:string, {spec}, note?:string")
    prediction: Prediction = {"reasoning": "Let me think: it is simple.", "out": value}
    text = format_answer(sig, prediction, structured=structured)
    assert parse_answer(sig, text) == prediction


def test_text_format_is_one_labelled_line_per_field() -> None:
    sig = Signature.parse("q -> answer, n:number, tags:string[], data:json, ok:boolean")
    text = format_answer(
        sig, {"answer": "sports", "n": 3, "tags": ["a", "b"], "data": {"x": 1}, "ok": False}
    )
    assert text == 'answer: sports\nn: 3\ntags: ["a","b"]\ndata: {"x":1}\nok: false'


def test_structured_format_is_a_json_object_with_json_fields_encoded() -> None:
    sig = Signature.parse("q -> answer, data:json")
    text = format_answer(sig, {"answer": "x", "data": {"k": [1]}}, structured=True)
    assert json.loads(text) == {"answer": "x", "data": '{"k":[1]}'}


def test_render_messages_system_demos_then_input() -> None:
    demos = [
        {"text": "Team wins cup", "topic": "sports"},
        {"text": "New law passed", "topic": "politics", "extra": "ignored"},
    ]
    messages = render_messages(
        TOPIC, instruction="Classify the headline.", demos=demos, inputs={"text": "Rover lands"}
    )
    assert [m.role for m in messages] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    system = messages[0].content
    assert system.startswith("Classify the headline.")
    assert "- text (string): A news headline" in system
    assert "- topic (one of: sports, politics, science)" in system
    assert "topic: <one of: sports, politics, science>" in system
    assert messages[1] == ChatMessage(role="user", content="text: Team wins cup")
    assert messages[2] == ChatMessage(role="assistant", content="topic: sports")
    assert messages[4].content == "topic: politics"
    assert messages[5] == ChatMessage(role="user", content="text: Rover lands")
    # Every demo answer is exactly what parse_answer reads back.
    assert parse_answer(TOPIC, messages[4].content) == {"topic": "politics"}


def test_render_messages_structured_demos_are_json() -> None:
    messages = render_messages(
        TOPIC,
        instruction="Classify.",
        demos=[{"text": "Goal!", "topic": "sports"}],
        inputs={"text": "Vote"},
        structured=True,
    )
    assert 'Answer with only a JSON object with the keys "topic".' in messages[0].content
    assert json.loads(messages[2].content) == {"topic": "sports"}


def test_render_messages_instruction_fallbacks() -> None:
    described = Signature.parse('"Answer briefly." question -> answer')
    first = render_messages(described, instruction="  ", inputs={"question": "q"})[0]
    assert first.content.startswith("Answer briefly.\n")
    bare = Signature.parse("question, context -> answer")
    first = render_messages(bare, instruction="", inputs={"question": "q", "context": "c"})[0]
    assert first.content.startswith(
        "Given the fields question, context, produce the fields answer."
    )


def test_render_messages_partial_demos_and_optional_inputs() -> None:
    sig = Signature.parse("question, hint?:string[] -> reasoning!, answer, score?:number")
    messages = render_messages(
        sig,
        instruction="Answer.",
        demos=[
            {"question": "1+1?", "answer": "2"},  # no internal reasoning, no optional score
            {"question": "no outputs at all"},  # skipped: nothing to show as an answer
        ],
        inputs={"question": "2+2?", "hint": ["add", "carefully"]},
    )
    assert [m.content for m in messages[1:]] == [
        "question: 1+1?",
        "answer: 2",
        'question: 2+2?\nhint: ["add","carefully"]',
    ]
    without_hint = render_messages(sig, instruction="Answer.", inputs={"question": "q"})
    assert without_hint[-1].content == "question: q"


def test_render_messages_requires_required_inputs() -> None:
    with pytest.raises(DatasetError, match="input field 'text'") as info:
        render_messages(TOPIC, instruction="x", inputs={"topic": "sports"})
    assert info.value.field == "text"


@pytest.mark.parametrize(
    "answer",
    [
        "**Topic:** Sports",
        "**topic**: sports.",
        "- Topic - SPORTS",
        "Sure! Here is my answer.\n\ntopic: sports\n\nLet me know if you need anything else.",
        '```json\n{"Topic": "sports"}\n```',
        'I think the answer is {"topic": "sports"} because of the cup.',
        "Sports.",
        "This headline is clearly about sports.",
        "text: Team wins cup\ntopic: sports",
        "topic:\nsports",
    ],
)
def test_parse_messy_class_answers(answer: str) -> None:
    assert parse_answer(TOPIC, answer) == {"topic": "sports"}


def test_parse_multiline_values_stop_at_next_label() -> None:
    sig = Signature.parse("q -> reasoning!:string, answer:string, confidence:number")
    answer = (
        "## Reasoning: First, note the facts.\nThen conclude.\n"
        "**Answer:** Paris\n"
        "Confidence = about 0.9."
    )
    assert parse_answer(sig, answer) == {
        "reasoning": "First, note the facts.\nThen conclude.",
        "answer": "Paris",
        "confidence": 0.9,
    }


def test_parse_single_unlabelled_answer_is_the_whole_text() -> None:
    sig = Signature.parse("question -> reasoning?!:string, answer:string")
    assert parse_answer(sig, "  The capital of France is Paris.\n") == {
        "answer": "The capital of France is Paris."
    }


@pytest.mark.parametrize(
    ("spec", "answer", "expected"),
    [
        ("out:number", "out: about 1,234.5 dollars", 1234.5),
        ("out:number", "out: 7.0", 7),
        ("out:boolean", "out: Yes, definitely", True),
        ("out:boolean", "out: 0", False),
        ("out:string[]", "out:\n- apples\n- pears\n", ["apples", "pears"]),
        ("out:string[]", "out: apples, pears", ["apples", "pears"]),
        ("out:number[]", "out: [1, 2, 3]", [1, 2, 3]),
        ('out:class[] "red, green"', "out: Red, GREEN.", ["red", "green"]),
        ("out:json", 'out:\n```json\n{"a": 1}\n```', {"a": 1}),
        ("out:code", "out:\n```python\nprint(1)\n```", "print(1)"),
        ("out:json", '{"out": {"nested": true}}', {"nested": True}),
        ("out:number", '{"OUT": "12"}', 12),
    ],
)
def test_parse_coerces_values(spec: str, answer: str, expected: JsonValue) -> None:
    sig = Signature.parse(f"q -> {spec}")
    assert parse_answer(sig, answer) == {"out": expected}


def test_parse_missing_required_field_raises_with_raw_text() -> None:
    sig = Signature.parse("q -> answer, score:number, note?:string")
    text = "answer: Paris\nnote: short"
    with pytest.raises(ParseError, match="no value for output field 'score'") as info:
        parse_answer(sig, text)
    assert info.value.raw == text
    assert info.value.field == "score"


def test_parse_missing_optional_and_internal_fields_are_omitted() -> None:
    sig = Signature.parse("q -> why!:string, answer, note?:string")
    assert parse_answer(sig, "answer: yes") == {"answer": "yes"}
    assert parse_answer(sig, '{"answer": "yes", "note": null}') == {"answer": "yes"}


@pytest.mark.parametrize(
    "answer",
    ["topic: weather", "topic: sports or politics", "I cannot tell.", '{"topic": "art"}'],
)
def test_parse_invalid_class_value_raises_listing_options(answer: str) -> None:
    with pytest.raises(ParseError, match="sports, politics, science") as info:
        parse_answer(TOPIC, answer)
    assert info.value.raw == answer
    assert info.value.field == "topic"


@pytest.mark.parametrize(
    ("spec", "answer", "message"),
    [
        ("out:number", "out: many", "expected a number"),
        ("out:boolean", "out: perhaps", "expected true or false"),
        ("out:json", "out: {not json", "expected a JSON value"),
        ("out:number", '{"out": true}', "expected a number"),
    ],
)
def test_parse_bad_values_raise_parse_error(spec: str, answer: str, message: str) -> None:
    sig = Signature.parse(f"q -> {spec}")
    with pytest.raises(ParseError, match=message) as info:
        parse_answer(sig, answer)
    assert info.value.raw == answer


def test_parse_with_two_outputs_and_no_labels_fails() -> None:
    sig = Signature.parse("q -> answer, explanation")
    with pytest.raises(ParseError) as info:
        parse_answer(sig, "Paris, because it is the capital.")
    assert info.value.field == "answer"


def test_response_schema() -> None:
    sig = Signature.parse(
        'q -> why!:string, topic:class "a, b" "The topic", n:number, ok?:boolean, '
        "tags:string[], data:json"
    )
    fmt = response_schema(sig)
    assert fmt["type"] == "json_schema"
    spec = fmt["json_schema"]
    assert isinstance(spec, dict)
    assert spec["strict"] is True
    schema = spec["schema"]
    assert isinstance(schema, dict)
    assert schema["required"] == ["why", "topic", "n", "ok", "tags", "data"]
    assert schema["additionalProperties"] is False
    assert schema["properties"] == {
        "why": {"type": "string"},
        "topic": {"type": "string", "enum": ["a", "b"], "description": "The topic"},
        "n": {"type": "number"},
        "ok": {"anyOf": [{"type": "boolean"}, {"type": "null"}]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "data": {"type": "string", "description": "a JSON value, encoded as a string"},
    }
    assert isinstance(spec["name"], str)
    assert spec["name"]


@pytest.mark.parametrize(
    "answer",
    [
        "",
        "   \n\n",
        "{",
        "}{",
        '{"out": ',
        "[" * 5000,
        '{"out": ' + "[" * 5000 + "]" * 5000 + "}",
        "out: 1e999",
        "out: NaN",
        "```",
        "```json\n{bad}\n```",
        "{" * 300 + "out: x",
        "\x00\x01 out:",
        "**:**",
    ],
)
@pytest.mark.parametrize(
    "spec", ["out:number", "out:boolean", 'out:class "a, b"', "out:json", "out:string[]"]
)
def test_garbage_answers_raise_only_parse_error(spec: str, answer: str) -> None:
    sig = Signature.parse(f"q -> {spec}")
    try:
        parse_answer(sig, answer)
    except ParseError as error:
        assert error.raw == answer
