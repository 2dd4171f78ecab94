"""Signatures: the typed input and output fields of one LLM call, in Ax syntax.

A signature reads like Ax's (https://github.com/ax-llm/ax)::

    "Classify emails" emailText:string "The email" -> priority:class "critical, normal, low",
        reason?:string "Why"

Grammar (whitespace is allowed between all tokens)::

    signature := [description] fields '->' fields
    fields    := field (',' field)*
    field     := name ('?' | '!')* [':' type] [description]
    type      := 'class' ['[]'] options | typename ['[]']
    options   := quoted string of option names separated by ',' or '|'
    description := a string in double (or single) quotes; '\\' escapes the next character

``?`` marks an optional field, ``!`` an internal output (produced by the model, e.g. its
reasoning, but not part of the program's answer). The type defaults to ``string``. Class fields
are outputs only, as in Ax. ``str(signature)`` renders the same syntax, and
``Signature.parse(str(s)) == s`` holds for every signature.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from enum import Enum

from pydantic import BaseModel, ConfigDict, JsonValue, field_validator, model_validator

from mipro_ray.errors import SignatureError

__all__ = ["Example", "Field", "FieldType", "Prediction", "Signature"]

Example = dict[str, JsonValue]
"""One example row: field name -> value."""

Prediction = dict[str, JsonValue]
"""The parsed output fields of one LM call: field name -> value."""

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MEDIA_TYPES = frozenset({"image", "audio", "file"})
_TYPE_ALIASES = {"object": "json"}  # Ax treats 'object' as a synonym of 'json'


class FieldType(str, Enum):
    """The value type of a field. Ax's media types (image, audio, file) are not supported."""

    STRING = "string"
    NUMBER = "number"
    BOOLEAN = "boolean"
    CLASS = "class"
    JSON = "json"
    DATE = "date"
    DATETIME = "datetime"
    CODE = "code"
    URL = "url"


_TYPE_NAMES = ", ".join(t.value for t in FieldType)

_TYPE_LABELS = {
    FieldType.STRING: "string",
    FieldType.NUMBER: "number",
    FieldType.BOOLEAN: "boolean (true or false)",
    FieldType.JSON: "JSON",
    FieldType.DATE: "date (YYYY-MM-DD)",
    FieldType.DATETIME: "datetime (ISO 8601)",
    FieldType.CODE: "code",
    FieldType.URL: "URL",
}


class Field(BaseModel):
    """One input or output field of a signature.

    Attributes:
        name: An identifier (letters, digits and ``_``, not starting with a digit).
        type: The value type; ``string`` by default.
        is_list: Whether the value is a list of ``type``.
        description: What the field holds, shown to the model.
        optional: Whether the field may be absent.
        internal: Output produced by the model but not part of the answer (Ax ``!``).
        options: The allowed values of a ``class`` field (at least one); empty otherwise.

    Raises:
        SignatureError: If the name is not an identifier or the options do not fit the type.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    type: FieldType = FieldType.STRING
    is_list: bool = False
    description: str | None = None
    optional: bool = False
    internal: bool = False
    options: tuple[str, ...] = ()

    @field_validator("description")
    @classmethod
    def _strip_description(cls, value: str | None) -> str | None:
        # Ax trims descriptions; doing the same here keeps parse(str(s)) == s.
        if value is None:
            return None
        return value.strip() or None

    @field_validator("options")
    @classmethod
    def _strip_options(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(option.strip() for option in value)

    @model_validator(mode="after")
    def _check(self) -> Field:
        if not _IDENTIFIER.fullmatch(self.name):
            raise SignatureError(
                f"invalid field name {self.name!r}: expected a letter or '_' followed by "
                "letters, digits or '_'"
            )
        if self.type is FieldType.CLASS:
            if not self.options:
                raise SignatureError(
                    f"class field {self.name!r} needs at least one option, "
                    f'e.g. {self.name}:class "a, b"'
                )
            for option in self.options:
                if not option or "," in option or "|" in option:
                    raise SignatureError(
                        f"class field {self.name!r} has option {option!r}: options must be "
                        "non-empty and contain no ',' or '|'"
                    )
            if len(set(self.options)) != len(self.options):
                raise SignatureError(f"class field {self.name!r} repeats an option")
        elif self.options:
            raise SignatureError(
                f"field {self.name!r} has options but type {self.type.value!r}; "
                "only class fields take options"
            )
        return self

    def type_label(self) -> str:
        """Returns the type as shown to the model, e.g. ``list of number`` or ``one of: a, b``."""
        if self.type is FieldType.CLASS:
            base = "one of: " + ", ".join(self.options)
            return f"list of values, each {base}" if self.is_list else base
        base = _TYPE_LABELS[self.type]
        return f"list of {base}" if self.is_list else base

    def __str__(self) -> str:
        out = self.name
        if self.optional:
            out += "?"
        if self.internal:
            out += "!"
        if self.type is FieldType.CLASS:
            out += ":class" + ("[]" if self.is_list else "")
            out += " " + _quote(", ".join(self.options))
        elif self.type is not FieldType.STRING or self.is_list:
            out += ":" + self.type.value + ("[]" if self.is_list else "")
        if self.description is not None:
            out += " " + _quote(self.description)
        return out


class Signature(BaseModel):
    """The typed inputs and outputs of one LLM call, with an optional task description.

    Attributes:
        inputs: The input fields, in prompt order (at least one).
        outputs: The output fields, in answer order (at least one).
        description: The task, shown to the model when no instruction is given.

    Raises:
        SignatureError: If a side is empty, a name repeats, an input is internal or an input
            is a class field.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    inputs: tuple[Field, ...]
    outputs: tuple[Field, ...]
    description: str | None = None

    @field_validator("description")
    @classmethod
    def _strip_description(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return value.strip() or None

    @model_validator(mode="after")
    def _check(self) -> Signature:
        if not self.inputs:
            raise SignatureError("a signature needs at least one input field")
        if not self.outputs:
            raise SignatureError("a signature needs at least one output field")
        seen: set[str] = set()
        for field in (*self.inputs, *self.outputs):
            if field.name in seen:
                raise SignatureError(f"duplicate field name {field.name!r}")
            seen.add(field.name)
        for field in self.inputs:
            if field.internal:
                raise SignatureError(
                    f"input field {field.name!r} is internal ('!'); only outputs can be internal"
                )
            if field.type is FieldType.CLASS:
                raise SignatureError(
                    f"input field {field.name!r} is a class field; class fields are outputs "
                    "only (as in Ax): use string for inputs"
                )
        return self

    @classmethod
    def parse(cls, text: str) -> Signature:
        """Parses an Ax signature string.

        Args:
            text: E.g. ``"question -> answer"`` or ``"q:string \\"The question\\" -> n:number"``.

        Returns:
            The signature.

        Raises:
            SignatureError: If the text is malformed; ``position`` is the 0-based offset.
        """
        return _Parser(text).parse()

    @classmethod
    def from_fields(
        cls,
        *,
        inputs: Sequence[Field | tuple[str, FieldType]],
        outputs: Sequence[Field | tuple[str, FieldType]],
        description: str | None = None,
    ) -> Signature:
        """Builds a signature from fields or ``(name, type)`` pairs.

        Raises:
            SignatureError: As the constructor; a class field must be given as a `Field`.
        """
        return cls(
            inputs=tuple(_as_field(f) for f in inputs),
            outputs=tuple(_as_field(f) for f in outputs),
            description=description,
        )

    @property
    def input_names(self) -> tuple[str, ...]:
        """The input field names, in order."""
        return tuple(f.name for f in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        """The output field names, in order (internal ones included)."""
        return tuple(f.name for f in self.outputs)

    def field(self, name: str) -> Field:
        """Returns the input or output field called ``name``.

        Raises:
            SignatureError: If there is no such field.
        """
        for f in (*self.inputs, *self.outputs):
            if f.name == name:
                return f
        names = ", ".join((*self.input_names, *self.output_names))
        raise SignatureError(f"signature '{self}' has no field {name!r}; its fields are {names}")

    def __str__(self) -> str:
        head = _quote(self.description) + " " if self.description is not None else ""
        inputs = ", ".join(str(f) for f in self.inputs)
        outputs = ", ".join(str(f) for f in self.outputs)
        return f"{head}{inputs} -> {outputs}"


def _as_field(spec: Field | tuple[str, FieldType]) -> Field:
    if isinstance(spec, Field):
        return spec
    name, type_ = spec
    return Field(name=name, type=type_)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class _Parser:
    """Recursive-descent parser over the signature text; positions are 0-based offsets."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, message: str, position: int | None = None) -> SignatureError:
        return SignatureError(
            message, text=self.text, position=self.pos if position is None else position
        )

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self, token: str) -> bool:
        return self.text.startswith(token, self.pos)

    def found(self) -> str:
        if self.pos >= len(self.text):
            return "end of text"
        return repr(self.text[self.pos : self.pos + 12])

    def parse(self) -> Signature:
        self.skip_ws()
        if self.pos >= len(self.text):
            raise self.error("empty signature: expected e.g. 'question -> answer'")
        description = self.string() if self.peek('"') or self.peek("'") else None
        seen: set[str] = set()
        inputs = self.fields("input", seen)
        self.skip_ws()
        if not self.peek("->"):
            raise self.error(
                f"expected ',' or '->' between inputs and outputs, found {self.found()}"
            )
        self.pos += 2
        outputs = self.fields("output", seen)
        self.skip_ws()
        if self.pos < len(self.text):
            raise self.error(
                f"expected ',' or end of signature after outputs, found {self.found()}"
            )
        return Signature(inputs=tuple(inputs), outputs=tuple(outputs), description=description)

    def fields(self, side: str, seen: set[str]) -> list[Field]:
        result = [self.field(side, seen, first=True)]
        while True:
            self.skip_ws()
            if not self.peek(","):
                return result
            self.pos += 1
            result.append(self.field(side, seen, first=False))

    def field(self, side: str, seen: set[str], *, first: bool) -> Field:
        self.skip_ws()
        start = self.pos
        match = _IDENTIFIER.match(self.text, self.pos)
        if match is None:
            if first and side == "input" and self.peek("->"):
                raise self.error("no input fields: expected at least one input field before '->'")
            if first and side == "output" and self.pos >= len(self.text):
                raise self.error("no output fields: expected at least one output field after '->'")
            raise self.error(
                f"expected {side} field name (a letter or '_' followed by letters, digits or "
                f"'_'), found {self.found()}"
            )
        name = match.group()
        if name in seen:
            raise self.error(f"duplicate field name {name!r}", start)
        seen.add(name)
        self.pos = match.end()
        optional = internal = False
        while self.peek("?") or self.peek("!"):
            if self.peek("!"):
                if side == "input":
                    raise self.error(
                        f"input field {name!r} cannot be internal ('!'); only outputs can be"
                    )
                internal = True
            else:
                optional = True
            self.pos += 1
        type_, is_list = FieldType.STRING, False
        options: tuple[str, ...] = ()
        self.skip_ws()
        if self.peek(":"):
            self.pos += 1
            type_, is_list, options = self.type(name, side)
            self.skip_ws()
        description = self.string() if self.peek('"') or self.peek("'") else None
        return Field(
            name=name,
            type=type_,
            is_list=is_list,
            description=description,
            optional=optional,
            internal=internal,
            options=options,
        )

    def type(self, name: str, side: str) -> tuple[FieldType, bool, tuple[str, ...]]:
        self.skip_ws()
        start = self.pos
        match = _IDENTIFIER.match(self.text, self.pos)
        if match is None:
            raise self.error(
                f"expected a type after ':' for field {name!r}, found {self.found()}; "
                f"expected one of {_TYPE_NAMES}"
            )
        word = _TYPE_ALIASES.get(match.group(), match.group())
        self.pos = match.end()
        if word in _MEDIA_TYPES:
            raise self.error(
                f"type {word!r} of field {name!r} is not supported: mipro-ray optimizes "
                f"text-only LLM programs; expected one of {_TYPE_NAMES}",
                start,
            )
        if word not in FieldType._value2member_map_:
            close = difflib.get_close_matches(word, [t.value for t in FieldType], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise self.error(
                f"unknown type {word!r} for field {name!r}{hint}; expected one of {_TYPE_NAMES}",
                start,
            )
        type_ = FieldType(word)
        is_list = self.list_marker()
        if type_ is not FieldType.CLASS:
            return type_, is_list, ()
        if side == "input":
            raise self.error(
                f"input field {name!r} cannot be a class field; class fields are outputs only "
                "(as in Ax): use string for inputs",
                start,
            )
        self.skip_ws()
        if not (self.peek('"') or self.peek("'")):
            raise self.error(
                f"class field {name!r} needs its options in quotes, "
                f'e.g. {name}:class "a, b"; found {self.found()}'
            )
        options_at = self.pos
        options = tuple(o.strip() for o in re.split(r"[,|]", self.string()) if o.strip())
        if not options:
            raise self.error(f'class field {name!r} has no options, e.g. {name}:class "a, b"')
        if len(set(options)) != len(options):
            raise self.error(f"class field {name!r} repeats an option", options_at)
        is_list = self.list_marker() or is_list
        return type_, is_list, options

    def list_marker(self) -> bool:
        if self.peek("[]"):
            self.pos += 2
            return True
        return False

    def string(self) -> str:
        quote = self.text[self.pos]
        start = self.pos
        self.pos += 1
        chars: list[str] = []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            self.pos += 1
            if char == "\\" and self.pos < len(self.text):
                chars.append(self.text[self.pos])
                self.pos += 1
            elif char == quote:
                return "".join(chars)
            else:
                chars.append(char)
        raise self.error(
            f"unterminated description string: expected a closing {quote} for the string "
            f"opened at position {start}",
            start,
        )
