"""Prompt dialects the simulated LLM understands: how to read a request and write an answer.

A *dialect* is one client's prompt format. It finds, in the chat messages, the instruction,
the names of the output fields the client expects, and whether it wants JSON; and it renders
field values as that client parses them:

- `DSPyChatDialect`: DSPy's ``ChatAdapter`` (``[[ ## field ## ]]`` markers, the output fields
  listed under "Your output fields are:", the instruction after "your objective is:").
- `MiproRayDialect`: ``mipro_ray.prompt`` (instruction first, "Input fields:" / "Output
  fields:" lists, answers as ``name: value`` lines, or one JSON object when structured).
- `PlainDialect`: anything else (``name: value`` lines, or JSON when ``response_format`` is
  set); the whole system message counts as the instruction.

`parse_prompt` tries the dialects in order; pass your own tuple to add one. Stdlib-only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "DEFAULT_DIALECTS",
    "DSPyChatDialect",
    "Dialect",
    "MiproRayDialect",
    "ParsedPrompt",
    "PlainDialect",
    "parse_prompt",
]

Messages = Sequence[Mapping[str, str]]
ResponseFormat = Mapping[str, object] | None


@dataclass(frozen=True)
class ParsedPrompt:
    """What the simulated LLM needs to know about one request.

    Attributes:
        dialect: Name of the dialect that read it.
        instruction: The task instruction as the client rendered it.
        output_fields: Output field names, in the order the client expects them.
        structured: Whether the answer must be one JSON object.
        text: All message contents joined by newlines.
        last_user: The content of the last user message.
    """

    dialect: str
    instruction: str
    output_fields: tuple[str, ...]
    structured: bool
    text: str
    last_user: str


class Dialect(Protocol):
    """One client's prompt format."""

    name: str

    def matches(self, messages: Messages, response_format: ResponseFormat) -> bool:
        """Whether the request is in this dialect."""
        ...

    def parse(self, messages: Messages, response_format: ResponseFormat) -> ParsedPrompt:
        """Reads a request known to match."""
        ...

    def format_answer(self, prompt: ParsedPrompt, values: Mapping[str, str]) -> str:
        """Renders output values (one per field of ``prompt.output_fields``) as the answer."""
        ...


def _system(messages: Messages) -> str:
    return "\n".join(m.get("content", "") for m in messages if m.get("role") == "system")


def _last_user(messages: Messages) -> str:
    users = [m.get("content", "") for m in messages if m.get("role") == "user"]
    return users[-1] if users else ""


def _text(messages: Messages) -> str:
    return "\n".join(m.get("content", "") for m in messages)


def _schema_fields(response_format: ResponseFormat) -> tuple[str, ...]:
    """Property names of an OpenAI ``json_schema`` response format, if any."""
    if response_format is None:
        return ()
    schema = response_format.get("json_schema")
    inner = schema.get("schema") if isinstance(schema, Mapping) else None
    props = inner.get("properties") if isinstance(inner, Mapping) else None
    return tuple(str(k) for k in props) if isinstance(props, Mapping) else ()


class DSPyChatDialect:
    """DSPy 3.x ``ChatAdapter`` prompts."""

    name = "dspy"
    _OUTPUTS = re.compile(r"Your output fields are:\n(.*?)(?:\nAll interactions|\Z)", re.S)
    _FIELD = re.compile(r"^\d+\. `(\w+)`", re.M)
    _OBJECTIVE = re.compile(r"your objective is:\s*(.*)\Z", re.S | re.I)

    def matches(self, messages: Messages, response_format: ResponseFormat) -> bool:
        """A system message with DSPy's ``[[ ## completed ## ]]`` marker."""
        return "[[ ## completed ## ]]" in _system(messages)

    def parse(self, messages: Messages, response_format: ResponseFormat) -> ParsedPrompt:
        """Reads the output-field list and the objective from the system message."""
        system = _system(messages)
        outputs = self._OUTPUTS.search(system)
        fields = tuple(self._FIELD.findall(outputs.group(1))) if outputs else ()
        objective = self._OBJECTIVE.search(system)
        return ParsedPrompt(
            dialect=self.name,
            instruction=objective.group(1).strip() if objective else system,
            output_fields=fields,
            structured=False,
            text=_text(messages),
            last_user=_last_user(messages),
        )

    def format_answer(self, prompt: ParsedPrompt, values: Mapping[str, str]) -> str:
        """``[[ ## field ## ]]`` blocks, then the completion marker."""
        blocks = [f"[[ ## {name} ## ]]\n{values.get(name, '')}" for name in prompt.output_fields]
        return "\n\n".join([*blocks, "[[ ## completed ## ]]"])


class MiproRayDialect:
    """Prompts rendered by ``mipro_ray.prompt.render_messages``."""

    name = "mipro_ray"
    _FIELD = re.compile(r"^- (\w+) \(", re.M)
    _JSON_HINT = "Answer with only a JSON object"

    def matches(self, messages: Messages, response_format: ResponseFormat) -> bool:
        """A system message with the "Input fields:" and "Output fields:" lists."""
        system = _system(messages)
        return "\nInput fields:" in system and "\nOutput fields:" in system

    def parse(self, messages: Messages, response_format: ResponseFormat) -> ParsedPrompt:
        """The instruction is what precedes "Input fields:"; outputs are listed after."""
        system = _system(messages)
        head, _, rest = system.partition("\nInput fields:")
        _, _, outputs = rest.partition("\nOutput fields:")
        listed = outputs.split("\n\n", 1)[0]
        fields = tuple(self._FIELD.findall(listed)) or _schema_fields(response_format)
        return ParsedPrompt(
            dialect=self.name,
            instruction=head.strip(),
            output_fields=fields,
            structured=response_format is not None or self._JSON_HINT in system,
            text=_text(messages),
            last_user=_last_user(messages),
        )

    def format_answer(self, prompt: ParsedPrompt, values: Mapping[str, str]) -> str:
        """One JSON object when structured, else ``name: value`` lines."""
        if prompt.structured:
            return json.dumps({name: values.get(name, "") for name in prompt.output_fields})
        return "\n".join(f"{name}: {values.get(name, '')}" for name in prompt.output_fields)


class PlainDialect:
    """Fallback for any other prompt: ``name: value`` lines, or JSON when asked for."""

    name = "plain"

    def matches(self, messages: Messages, response_format: ResponseFormat) -> bool:
        """Always (use it last)."""
        return True

    def parse(self, messages: Messages, response_format: ResponseFormat) -> ParsedPrompt:
        """Output fields come from the JSON schema if any, else a single ``answer``."""
        fields = _schema_fields(response_format) or ("answer",)
        return ParsedPrompt(
            dialect=self.name,
            instruction=_system(messages),
            output_fields=fields,
            structured=response_format is not None,
            text=_text(messages),
            last_user=_last_user(messages),
        )

    def format_answer(self, prompt: ParsedPrompt, values: Mapping[str, str]) -> str:
        """One JSON object when structured, else ``name: value`` lines."""
        if prompt.structured:
            return json.dumps({name: values.get(name, "") for name in prompt.output_fields})
        return "\n".join(f"{name}: {values.get(name, '')}" for name in prompt.output_fields)


DEFAULT_DIALECTS: tuple[Dialect, ...] = (DSPyChatDialect(), MiproRayDialect(), PlainDialect())
"""Tried in order by `parse_prompt`."""


def parse_prompt(
    messages: Messages,
    response_format: ResponseFormat,
    dialects: Sequence[Dialect] = DEFAULT_DIALECTS,
) -> tuple[Dialect, ParsedPrompt]:
    """Reads a request with the first dialect that matches it.

    Raises:
        ValueError: If no dialect matches (only without a catch-all like `PlainDialect`).
    """
    for dialect in dialects:
        if dialect.matches(messages, response_format):
            return dialect, dialect.parse(messages, response_format)
    raise ValueError("no prompt dialect matches the request; add one to the dialect list")
