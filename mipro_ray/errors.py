"""The one error tree of mipro-ray.

Every error the library raises on purpose derives from :class:`MiproError`::

    MiproError
    ├── ConfigError              a config, preset or argument is invalid
    ├── SignatureError           a signature string is malformed (names the position)
    ├── DatasetError             a dataset cannot be read or a row does not fit the signature
    ├── ProgramError             a program cannot be built, loaded or run as asked
    │   └── ParseError           an LM answer could not be parsed into the output fields
    ├── MetricError              a metric raised or returned something that is not a score
    ├── LMError                  an LM call failed (carries status, model, retry_after, retryable)
    │   ├── LMTimeoutError       the endpoint did not answer within the timeout
    │   ├── LMRateLimitError     429: the provider's rate limit was hit
    │   ├── LMServerError        5xx from the endpoint
    │   └── LMRequestError       4xx other than 429: our request or credentials are wrong
    ├── EvaluationError          an evaluation exceeded its error budget
    ├── BudgetExceeded           an optimization budget (calls, tokens, cost) ran out
    └── StorageError             a run directory or study storage cannot be used

HTTP status mapping lives in one place in ``serve_app``; the library never raises HTTP errors.
"""

from __future__ import annotations


class MiproError(Exception):
    """Base class of every error raised on purpose by mipro-ray."""


class ConfigError(MiproError):
    """A configuration, preset or argument is invalid."""


class SignatureError(MiproError):
    """A signature string is malformed.

    Attributes:
        text: The signature text that failed to parse.
        position: 0-based character offset where parsing failed.
    """

    def __init__(self, message: str, *, text: str = "", position: int | None = None) -> None:
        self.text = text
        self.position = position
        if position is not None and text:
            pointer = " " * position + "^"
            message = f"{message} (at position {position})\n  {text}\n  {pointer}"
        super().__init__(message)


class DatasetError(MiproError):
    """A dataset cannot be read, or one of its rows does not fit the signature.

    Attributes:
        row: 0-based row number of the offending row, when one row is at fault.
        field: Name of the offending field, when one field is at fault.
    """

    def __init__(self, message: str, *, row: int | None = None, field: str | None = None) -> None:
        self.row = row
        self.field = field
        super().__init__(message)


class ProgramError(MiproError):
    """A program cannot be built, loaded or run as asked."""


class ParseError(ProgramError):
    """An LM answer could not be parsed into the signature's output fields.

    Attributes:
        raw: The raw answer text (truncated for display by callers).
        field: The output field that was missing or invalid, if known.
    """

    def __init__(self, message: str, *, raw: str = "", field: str | None = None) -> None:
        self.raw = raw
        self.field = field
        super().__init__(message)


class MetricError(MiproError):
    """A metric raised, or returned something that is not a number or bool."""


class LMError(MiproError):
    """An LM call failed.

    Attributes:
        model: The model that was called.
        status: HTTP status code, if the endpoint answered.
        retry_after: Seconds the endpoint asked us to wait, if it said so.
        retryable: Whether retrying the same request may succeed.
    """

    retryable_default = False
    kind = "lm"

    def __init__(
        self,
        message: str,
        *,
        model: str = "",
        status: int | None = None,
        retry_after: float | None = None,
        retryable: bool | None = None,
    ) -> None:
        self.model = model
        self.status = status
        self.retry_after = retry_after
        self.retryable = retryable if retryable is not None else self.retryable_default
        super().__init__(message)


class LMTimeoutError(LMError):
    """The endpoint did not answer within the configured timeout."""

    retryable_default = True
    kind = "timeout"


class LMRateLimitError(LMError):
    """The endpoint answered 429 Too Many Requests."""

    retryable_default = True
    kind = "rate_limit"


class LMServerError(LMError):
    """The endpoint answered with a 5xx status or the connection broke."""

    retryable_default = True
    kind = "server"


class LMRequestError(LMError):
    """The endpoint rejected the request (4xx other than 429): fix the request or key."""

    retryable_default = False
    kind = "request"


class EvaluationError(MiproError):
    """An evaluation stopped because too many examples failed."""


class BudgetExceeded(MiproError):
    """An optimization budget (LLM calls, tokens or cost) is used up."""


class StorageError(MiproError):
    """A run directory or study storage cannot be read or written."""
