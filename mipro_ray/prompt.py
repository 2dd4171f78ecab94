"""Chat prompts from a signature, and answers parsed back into output fields.

Text format (the default) is one line per field, labelled with the field name::

    question: Who won the match?
    answer: sports

Lists are JSON arrays and ``json`` fields compact JSON, each on its label's line; a string or
code value may span several lines (until the next field label). The format is deliberately
plain so that a 135M-parameter local model can copy it from the demos, and big hosted models
follow it without trouble.

Structured format (``structured=True``) keeps the same user turns but the assistant answers
with one JSON object keyed by output field name, matching :func:`response_schema`. In that
object a ``json`` field holds its value *encoded as a JSON string*, because OpenAI's strict
structured outputs cannot describe a free-form object; :func:`parse_answer` decodes it.

:func:`parse_answer` is lenient about what models actually write (markdown, fences, chatter,
case) and raises only :class:`~mipro_ray.errors.ParseError`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, JsonValue

from mipro_ray.errors import DatasetError, ParseError
from mipro_ray.signature import Field, FieldType, Prediction, Signature

__all__ = [
    "ChatMessage",
    "format_answer",
    "parse_answer",
    "render_messages",
    "response_schema",
]


class ChatMessage(BaseModel):
    """One chat message as sent to an OpenAI-compatible chat endpoint."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str


# ---------------------------------------------------------------------------------------------
# Rendering


def render_messages(
    signature: Signature,
    *,
    instruction: str,
    demos: Sequence[Mapping[str, JsonValue]] = (),
    inputs: Mapping[str, JsonValue],
    structured: bool = False,
) -> list[ChatMessage]:
    """Renders the chat messages of one call.

    The system message holds the instruction, the field list and the answer format; each demo
    becomes a user turn (its inputs) and an assistant turn (its outputs, exactly as the answer
    should look); the last user turn holds ``inputs``.

    Args:
        signature: The call's signature.
        instruction: The task instruction; if blank, the signature's description or a
            sentence built from the field names is used.
        demos: Examples with input and output fields. Missing fields are left out; a demo
            without any output field is skipped.
        inputs: The input values of this call. Keys that are not input fields are ignored.
        structured: Whether the assistant answers with a JSON object (see module docstring).

    Returns:
        The messages: system, then user/assistant pairs, then the final user turn.

    Raises:
        DatasetError: If ``inputs`` lacks a required input field.
    """
    for field in signature.inputs:
        if not field.optional and inputs.get(field.name) is None:
            raise DatasetError(
                f"input field {field.name!r} required by signature '{signature}' is missing",
                field=field.name,
            )
    messages = [
        ChatMessage(role="system", content=_system_prompt(signature, instruction, structured))
    ]
    for demo in demos:
        answer = format_answer(signature, demo, structured=structured)
        if not answer:
            continue
        question = _format_inputs(signature, demo)
        if not question:
            continue
        messages.append(ChatMessage(role="user", content=question))
        messages.append(ChatMessage(role="assistant", content=answer))
    messages.append(ChatMessage(role="user", content=_format_inputs(signature, inputs)))
    return messages


def format_answer(
    signature: Signature, prediction: Mapping[str, JsonValue], *, structured: bool = False
) -> str:
    """Formats output values as the model should write them.

    Args:
        signature: The call's signature.
        prediction: Output values by field name; absent or ``None`` fields are left out and
            keys that are not output fields are ignored.
        structured: JSON object instead of labelled lines.

    Returns:
        The answer text, or ``""`` if no output field has a value.
    """
    present = [f for f in signature.outputs if prediction.get(f.name) is not None]
    if not present:
        return ""
    if structured:
        obj: dict[str, JsonValue] = {}
        for field in present:
            value = prediction[field.name]
            obj[field.name] = _encode_json_field(field, value)
        return json.dumps(obj, ensure_ascii=False)
    return "\n".join(f"{f.name}: {_format_value(f, prediction[f.name])}" for f in present)


def _system_prompt(signature: Signature, instruction: str, structured: bool) -> str:
    task = instruction.strip() or (signature.description or "")
    if not task:
        task = (
            f"Given the fields {', '.join(signature.input_names)}, "
            f"produce the fields {', '.join(signature.output_names)}."
        )
    lines = [task, "", "Input fields:"]
    lines += [_describe(f) for f in signature.inputs]
    lines.append("Output fields:")
    lines += [_describe(f) for f in signature.outputs]
    lines.append("")
    if structured:
        keys = ", ".join(f'"{f.name}"' for f in signature.outputs)
        lines.append(f"Answer with only a JSON object with the keys {keys}.")
        if any(f.type is FieldType.JSON for f in signature.outputs):
            lines.append("Give each JSON field as a string that holds its JSON value.")
    else:
        lines.append("Answer with exactly these lines and nothing else:")
        lines += [f"{f.name}: <{f.type_label()}>" for f in signature.outputs]
    return "\n".join(lines)


def _describe(field: Field) -> str:
    line = f"- {field.name} ({field.type_label()}{', optional' if field.optional else ''})"
    return f"{line}: {field.description}" if field.description else line


def _format_inputs(signature: Signature, example: Mapping[str, JsonValue]) -> str:
    return "\n".join(
        f"{f.name}: {_format_value(f, example[f.name])}"
        for f in signature.inputs
        if example.get(f.name) is not None
    )


def _format_value(field: Field, value: JsonValue) -> str:
    if field.is_list or field.type is FieldType.JSON:
        return _dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return _dumps(value)


def _dumps(value: JsonValue) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _encode_json_field(field: Field, value: JsonValue) -> JsonValue:
    # Structured answers carry json fields as JSON-encoded strings (see response_schema).
    if field.type is not FieldType.JSON:
        return value
    if field.is_list and isinstance(value, list):
        return [_dumps(item) for item in value]
    return _dumps(value)


# ---------------------------------------------------------------------------------------------
# Response schema


def response_schema(signature: Signature) -> dict[str, JsonValue]:
    """Returns an OpenAI ``response_format`` value (strict JSON schema) for the outputs.

    Every output is a property and listed in ``required`` (strict mode demands it); optional
    and internal-optional outputs may be ``null``. Class fields are string enums, number and
    boolean fields map to those JSON types, lists to arrays. A ``json`` field is a *string*
    holding the JSON value (strict mode forbids free-form objects); :func:`parse_answer`
    decodes it. A list of ``json`` is an array of such strings.
    """
    properties: dict[str, JsonValue] = {}
    for field in signature.outputs:
        schema = _field_schema(field)
        if field.optional:
            schema = {"anyOf": [schema, {"type": "null"}]}
        properties[field.name] = schema
    name = re.sub(r"[^A-Za-z0-9_-]", "_", "_".join(signature.output_names))[:64]
    required: list[JsonValue] = list(signature.output_names)
    return {
        "type": "json_schema",
        "json_schema": {
            "name": name,
            "strict": True,
            "schema": {
                "type": "object",
                "properties": properties,
                "required": required,
                "additionalProperties": False,
            },
        },
    }


def _field_schema(field: Field) -> dict[str, JsonValue]:
    item: dict[str, JsonValue]
    if field.type is FieldType.CLASS:
        options: list[JsonValue] = list(field.options)
        item = {"type": "string", "enum": options}
    elif field.type is FieldType.NUMBER:
        item = {"type": "number"}
    elif field.type is FieldType.BOOLEAN:
        item = {"type": "boolean"}
    elif field.type is FieldType.JSON:
        item = {"type": "string", "description": "a JSON value, encoded as a string"}
    else:
        item = {"type": "string"}
        if field.type in (FieldType.DATE, FieldType.DATETIME, FieldType.URL):
            item["description"] = field.type_label()
    schema: dict[str, JsonValue] = {"type": "array", "items": item} if field.is_list else item
    if field.description:
        schema = {**schema, "description": field.description}
    return schema


# ---------------------------------------------------------------------------------------------
# Parsing

_FENCE = re.compile(r"```[A-Za-z0-9_+-]*[ \t]*\n?(.*?)```", re.DOTALL)
# A labelled line: optional bullet or heading, optional markdown emphasis, the label, a
# separator (':', ' - ' or '='), optional closing emphasis, then the value.
_LABEL = re.compile(
    r"^\s*(?:[-*•>]\s+|\d+[.)]\s+|#+\s*)?[*_`]*\s*([A-Za-z][A-Za-z0-9_ ]*?)\s*[*_`]*\s*"
    r"(?::|\s-(?:\s|$)|=)[*_`]*\s*(.*)$"
)
_NUMBER = re.compile(
    r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+(?:[eE][-+]?\d+)?"
)
_MAX_JSON_BLOCKS = 20
_TRUE = frozenset({"true", "yes", "y", "1", "correct"})
_FALSE = frozenset({"false", "no", "n", "0", "incorrect"})
_BULLET = re.compile(r"^\s*(?:[-*•]\s+|\d+[.)]\s+)")
# Types whose value is one short token: trailing lines after it are chatter, not value.
_SINGLE_LINE = frozenset(
    {
        FieldType.NUMBER,
        FieldType.BOOLEAN,
        FieldType.CLASS,
        FieldType.DATE,
        FieldType.DATETIME,
        FieldType.URL,
    }
)


def parse_answer(signature: Signature, text: str) -> Prediction:
    """Parses an LM answer into output values.

    Tries, in order: a JSON object in a fenced block or as the whole answer, labelled lines
    (``name: value``; case-insensitive, markdown-tolerant), the first balanced ``{...}`` block,
    and, if the signature has exactly one non-internal output and nothing else matched, the
    whole answer as that output's value. JSON objects count only if a key names an output
    (case-insensitively). Values are then coerced to the field types.

    Args:
        signature: The call's signature.
        text: The raw answer.

    Returns:
        Values by output name; absent optional or internal outputs are omitted.

    Raises:
        ParseError: If a required output is missing or a value does not fit its type; ``raw``
            holds ``text`` and ``field`` the output at fault.
    """
    raw = _find_values(signature, text)
    result: Prediction = {}
    for field in signature.outputs:
        value = raw.get(field.name)
        if value is None or (isinstance(value, str) and not value.strip()):
            if field.optional or field.internal:
                continue
            raise ParseError(
                f"the answer has no value for output field {field.name!r} "
                f"(expected a line '{field.name}: ...')",
                raw=text,
                field=field.name,
            )
        result[field.name] = _coerce(field, value, text)
    return result


def _find_values(signature: Signature, text: str) -> dict[str, JsonValue]:
    stripped = text.strip()
    candidates = [m.group(1) for m in _FENCE.finditer(text)]
    candidates.append(stripped)
    for candidate in candidates:
        obj = _json_object(signature, candidate.strip())
        if obj is not None:
            return obj
    labelled = _labelled_values(signature, text)
    if labelled:
        return labelled
    for block in _balanced_blocks(text):
        obj = _json_object(signature, block)
        if obj is not None:
            return obj
    visible = [f for f in signature.outputs if not f.internal]
    if len(visible) == 1:
        return {visible[0].name: stripped}
    return {}


def _json_object(signature: Signature, text: str) -> dict[str, JsonValue] | None:
    if not text.startswith("{"):
        return None
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    values: dict[str, JsonValue] = {}
    for key, value in obj.items():
        name = _match_label(signature.outputs, key)
        if name is not None and name not in values:
            values[name] = value
    return values or None


def _balanced_blocks(text: str) -> Iterable[str]:
    # Bounded so that a long answer full of unbalanced braces (e.g. code) stays linear-ish.
    start = text.find("{")
    for _ in range(_MAX_JSON_BLOCKS):
        if start == -1:
            return
        depth, in_string, escaped = 0, False, False
        for i in range(start, len(text)):
            char = text[i]
            if in_string:
                if escaped:
                    escaped = False
                elif char == "\\":
                    escaped = True
                elif char == '"':
                    in_string = False
            elif char == '"':
                in_string = True
            elif char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
                if depth == 0:
                    yield text[start : i + 1]
                    break
        start = text.find("{", start + 1)


def _normalize_label(label: str) -> str:
    return re.sub(r"[^a-z0-9]", "", label.lower())


def _match_label(fields: Sequence[Field], label: str) -> str | None:
    for f in fields:
        if f.name == label:
            return f.name
    lowered = [f.name for f in fields if f.name.lower() == label.strip().lower()]
    if len(lowered) == 1:
        return lowered[0]
    normalized = [f.name for f in fields if _normalize_label(f.name) == _normalize_label(label)]
    return normalized[0] if len(normalized) == 1 else None


def _labelled_values(signature: Signature, text: str) -> dict[str, JsonValue]:
    # Input labels end a value too (models sometimes echo inputs) but are not collected.
    all_fields = (*signature.inputs, *signature.outputs)
    output_names = set(signature.output_names)
    chunks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        match = _LABEL.match(line)
        name = _match_label(all_fields, match.group(1)) if match else None
        if match is not None and name is not None:
            if name in output_names and name not in chunks:
                current = chunks[name] = [match.group(2)]
            else:
                current = None  # an input label, or a repeated output: ignore what follows
        elif current is not None:
            current.append(line)
    values: dict[str, JsonValue] = {}
    for name, lines in chunks.items():
        field = signature.field(name)
        if field.type in _SINGLE_LINE and not field.is_list:
            value = next((ln for ln in lines if ln.strip()), "")
        else:
            value = "\n".join(lines)
        values[name] = _strip_emphasis(value.strip())
    return values


def _strip_emphasis(value: str) -> str:
    # '**sports**' -> 'sports'; single '*' or '_' may be meaningful, so only doubled markers.
    for marker in ("**", "__"):
        if len(value) > 4 and value.startswith(marker) and value.endswith(marker):
            return value[2:-2].strip()
    return value


def _coerce(field: Field, value: JsonValue, raw: str) -> JsonValue:
    if field.is_list:
        return [_coerce_item(field, item, raw, lenient=True) for item in _as_list(value)]
    return _coerce_item(field, value, raw)


def _as_list(value: JsonValue) -> list[JsonValue]:
    if isinstance(value, list):
        return value
    if not isinstance(value, str):
        return [value]
    text = _unfence(value)
    if text.startswith("["):
        try:
            loaded = json.loads(text)
        except (ValueError, RecursionError):
            text = text.strip("[]")
        else:
            if isinstance(loaded, list):
                return loaded
    if "\n" in text:
        items = [_BULLET.sub("", line) for line in text.splitlines()]
    else:
        items = text.split(",")
    return [item.strip().strip("\"'") for item in items if item.strip().strip("\"'")]


def _coerce_item(field: Field, value: JsonValue, raw: str, *, lenient: bool = False) -> JsonValue:
    kind = field.type
    if kind is FieldType.NUMBER:
        return _to_number(field, value, raw)
    if kind is FieldType.BOOLEAN:
        return _to_bool(field, value, raw)
    if kind is FieldType.CLASS:
        return _to_class(field, value, raw)
    if kind is FieldType.JSON:
        return _to_json(field, value, raw, lenient=lenient)
    text = value if isinstance(value, str) else _dumps(value)
    if kind is FieldType.CODE:
        return _unfence(text)
    return text.strip()


def _fail(field: Field, message: str, raw: str) -> ParseError:
    return ParseError(f"output field {field.name!r}: {message}", raw=raw, field=field.name)


def _to_number(field: Field, value: JsonValue, raw: str) -> JsonValue:
    number: float
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = value
    else:
        match = _NUMBER.search(value) if isinstance(value, str) else None
        if match is None:
            raise _fail(field, f"expected a number, got {_short(value)}", raw)
        number = float(match.group().replace(",", ""))
    if isinstance(number, int):
        return number
    if number != number or number in (float("inf"), float("-inf")):
        raise _fail(field, f"expected a finite number, got {_short(value)}", raw)
    return int(number) if number.is_integer() else number


def _to_bool(field: Field, value: JsonValue, raw: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        words = re.findall(r"[a-z0-9]+", value.lower())
        for candidate in (" ".join(words), words[0] if words else ""):
            if candidate in _TRUE:
                return True
            if candidate in _FALSE:
                return False
    raise _fail(field, f"expected true or false, got {_short(value)}", raw)


def _normalize_option(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _to_class(field: Field, value: JsonValue, raw: str) -> str:
    if isinstance(value, bool):
        text = "true" if value else "false"
    else:
        text = value if isinstance(value, str) else _dumps(value)
    wanted = _normalize_option(text)
    for option in field.options:
        if _normalize_option(option) == wanted:
            return option
    found = [
        option
        for option in field.options
        if re.search(
            rf"(?<![A-Za-z0-9]){re.escape(option)}(?![A-Za-z0-9])", text, flags=re.IGNORECASE
        )
    ]
    if len(found) == 1:
        return found[0]
    raise _fail(field, f"{_short(value)} is not one of the options {', '.join(field.options)}", raw)


def _to_json(field: Field, value: JsonValue, raw: str, *, lenient: bool) -> JsonValue:
    # A list item may be an already-decoded JSON string (text mode) or an encoded one
    # (structured mode); the two cannot be told apart, so an undecodable item stays a string.
    if not isinstance(value, str):
        return value
    try:
        loaded: JsonValue = json.loads(_unfence(value))
    except (ValueError, RecursionError):
        if lenient:
            return value
        raise _fail(field, f"expected a JSON value, got {_short(value)}", raw) from None
    return loaded


def _unfence(text: str) -> str:
    text = text.strip()
    match = _FENCE.fullmatch(text)
    return match.group(1).strip("\n").rstrip() if match else text


def _short(value: JsonValue) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
