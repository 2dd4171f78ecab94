"""Tests for the Ax signature model and parser."""

from __future__ import annotations

import pytest

from mipro_ray.errors import SignatureError
from mipro_ray.signature import Field, FieldType, Signature


def test_minimal_signature_defaults_to_string_fields() -> None:
    sig = Signature.parse("question -> answer")
    assert sig.inputs == (Field(name="question"),)
    assert sig.outputs == (Field(name="answer"),)
    assert sig.description is None
    assert sig.input_names == ("question",)
    assert sig.output_names == ("answer",)


def test_full_example_from_ax_docs() -> None:
    sig = Signature.parse(
        '"Classify emails" emailText:string "The email" -> '
        'priority:class "critical, normal, low", reason?:string "Why"'
    )
    assert sig.description == "Classify emails"
    assert sig.inputs == (Field(name="emailText", description="The email"),)
    priority, reason = sig.outputs
    assert priority.type is FieldType.CLASS
    assert priority.options == ("critical", "normal", "low")
    assert reason == Field(name="reason", optional=True, description="Why")


@pytest.mark.parametrize("type_", [t for t in FieldType if t is not FieldType.CLASS])
def test_every_plain_type_parses_scalar_and_list(type_: FieldType) -> None:
    sig = Signature.parse(f"a:{type_.value}, b:{type_.value}[] -> out")
    assert sig.inputs == (
        Field(name="a", type=type_),
        Field(name="b", type=type_, is_list=True),
    )


def test_lists_optional_and_internal_markers() -> None:
    sig = Signature.parse("items:string[], hint? -> reasoning!:string, count:number, notes?!")
    assert sig.inputs[0] == Field(name="items", is_list=True)
    assert sig.inputs[1] == Field(name="hint", optional=True)
    assert sig.outputs[0] == Field(name="reasoning", internal=True)
    assert sig.outputs[1] == Field(name="count", type=FieldType.NUMBER)
    assert sig.outputs[2] == Field(name="notes", optional=True, internal=True)


def test_class_options_split_on_comma_or_pipe_and_class_lists() -> None:
    sig = Signature.parse('q -> a:class "x | y|z", b:class[] "p, q2", c:class "u, v"[]')
    a, b, c = sig.outputs
    assert a.options == ("x", "y", "z")
    assert (b.options, b.is_list) == (("p", "q2"), True)
    assert (c.options, c.is_list) == (("u", "v"), True)


def test_descriptions_with_escaped_quotes_and_whitespace() -> None:
    sig = Signature.parse(
        '  "Say \\"hi\\" back"\n  greeting : string "the \\"input\\"" ->\n'
        "  reply 'single \\'quoted\\''  "
    )
    assert sig.description == 'Say "hi" back'
    assert sig.inputs[0].description == 'the "input"'
    assert sig.outputs[0].description == "single 'quoted'"


def test_object_is_accepted_as_json_alias() -> None:
    assert Signature.parse("q -> data:object").outputs[0].type is FieldType.JSON


@pytest.mark.parametrize(
    "text",
    [
        "question -> answer",
        '"Task with \\"quotes\\" and \\\\ backslash" q:number[] "desc" -> a:json, b?:boolean',
        'emailText "The email" -> priority:class "critical, normal, low", reason!:string "Why"',
        'a:date, b:datetime, c:url, d:code -> e:class[] "x, y", f?!:number[], g:json[]',
    ],
)
def test_round_trip_through_str(text: str) -> None:
    sig = Signature.parse(text)
    assert Signature.parse(str(sig)) == sig


def test_str_renders_ax_syntax() -> None:
    sig = Signature(
        inputs=(Field(name="q", description='a "q"'),),
        outputs=(
            Field(name="why", internal=True),
            Field(name="label", type=FieldType.CLASS, options=("a", "b")),
            Field(name="n", type=FieldType.NUMBER, is_list=True, optional=True),
        ),
        description="Task",
    )
    assert str(sig) == '"Task" q "a \\"q\\"" -> why!, label:class "a, b", n?:number[]'
    assert Signature.parse(str(sig)) == sig


def test_python_construction_normalizes_like_the_parser() -> None:
    built = Signature.from_fields(
        inputs=[("question", FieldType.STRING)],
        outputs=[
            Field(name="topic", type=FieldType.CLASS, options=(" sports ", "politics")),
            ("score", FieldType.NUMBER),
        ],
        description="  Classify.  ",
    )
    assert built == Signature.parse(
        '"Classify." question -> topic:class "sports, politics", score:number'
    )
    assert built.field("score").type is FieldType.NUMBER
    with pytest.raises(SignatureError, match="no field 'nope'"):
        built.field("nope")


def test_type_label() -> None:
    assert Field(name="a").type_label() == "string"
    assert Field(name="a", type=FieldType.NUMBER, is_list=True).type_label() == "list of number"
    cls = Field(name="a", type=FieldType.CLASS, options=("a", "b", "c"))
    assert cls.type_label() == "one of: a, b, c"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "1bad"}, "invalid field name '1bad'"),
        ({"name": "c", "type": FieldType.CLASS}, "needs at least one option"),
        ({"name": "c", "options": ("a",)}, "only class fields take options"),
        ({"name": "c", "type": FieldType.CLASS, "options": ("a,b",)}, "no ',' or '|'"),
        ({"name": "c", "type": FieldType.CLASS, "options": ("a", "a")}, "repeats an option"),
    ],
)
def test_invalid_fields_raise_signature_error(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(SignatureError, match=message):
        Field.model_validate(kwargs)


def test_invalid_signatures_built_in_python() -> None:
    with pytest.raises(SignatureError, match="at least one input"):
        Signature(inputs=(), outputs=(Field(name="a"),))
    with pytest.raises(SignatureError, match="at least one output"):
        Signature(inputs=(Field(name="a"),), outputs=())
    with pytest.raises(SignatureError, match="duplicate field name 'a'"):
        Signature(inputs=(Field(name="a"),), outputs=(Field(name="a"),))
    with pytest.raises(SignatureError, match="only outputs can be internal"):
        Signature(inputs=(Field(name="a", internal=True),), outputs=(Field(name="b"),))


@pytest.mark.parametrize(
    ("text", "position", "message"),
    [
        ("question answer", 9, "expected ',' or '->' between inputs and outputs"),
        ("question", 8, "expected ',' or '->' between inputs and outputs, found end of text"),
        (
            "q -> a:strnig",
            7,
            "unknown type 'strnig' for field 'a' (did you mean 'string'?); "
            "expected one of string, number",
        ),
        (
            "q -> priority:class",
            19,
            "class field 'priority' needs its options in quotes, e.g. priority:class \"a, b\"",
        ),
        ("q -> p:class priority", 13, "needs its options in quotes"),
        ('q -> p:class " , |"', 19, "class field 'p' has no options"),
        ('q "the question -> a', 2, "unterminated description string"),
        ('"task -> a', 0, "unterminated description string"),
        ("q, a -> a", 8, "duplicate field name 'a'"),
        ("q, q -> a", 3, "duplicate field name 'q'"),
        ("-> answer", 0, "no input fields: expected at least one input field before '->'"),
        ("question ->  ", 13, "no output fields: expected at least one output field after '->'"),
        ("q -> a,", 7, "expected output field name"),
        (
            "q:image -> a",
            2,
            "type 'image' of field 'q' is not supported: mipro-ray optimizes text-only",
        ),
        ("q -> a:audio", 7, "type 'audio' of field 'a' is not supported"),
        ("q:file[] -> a", 2, "type 'file' of field 'q' is not supported"),
        ("q! -> a", 1, "input field 'q' cannot be internal"),
        ('q:class "a, b" -> a', 2, "input field 'q' cannot be a class field"),
        ("q -> a b", 7, "expected ',' or end of signature after outputs, found 'b'"),
        ("q -> a:", 7, "expected a type after ':' for field 'a'"),
        ("2q -> a", 0, "expected input field name"),
        ('q -> a:class "x, x"', 13, "repeats an option"),
    ],
)
def test_malformed_signature_names_position_and_expectation(
    text: str, position: int, message: str
) -> None:
    with pytest.raises(SignatureError) as info:
        Signature.parse(text)
    assert info.value.position == position
    assert info.value.text == text
    assert message in str(info.value)
    assert f"(at position {position})" in str(info.value)


def test_empty_signature() -> None:
    with pytest.raises(SignatureError, match="empty signature"):
        Signature.parse("   ")
