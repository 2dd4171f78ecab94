"""Errors of the Serve app and the one place that maps errors to HTTP status codes.

The Serve app's own errors extend the library's tree::

    mipro_ray.errors.MiproError
    └── ServeAppError                 a request cannot be served as asked (has ``status_code``)
        ├── NotFoundError             404: unknown study, job or trial
        ├── ConflictError             409: study exists, trial already finished, job cancelled
        ├── UnauthorizedError         401: missing or wrong bearer token
        ├── PayloadTooLargeError      413: body above the configured limit
        └── ServiceUnavailableError   503: the study actor or the database is unreachable

Library errors map as: ``ConfigError`` -> 422, ``StorageError`` -> 503, any other
``MiproError`` -> 500. Every error answer is JSON ``{"detail": ...}``; a caller's mistake is
never a 500 and no answer carries a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from mipro_ray.errors import ConfigError, MiproError, StorageError

logger = logging.getLogger(__name__)


class ServeAppError(MiproError):
    """A request cannot be served as asked; ``status_code`` says how to answer."""

    status_code = 500


class NotFoundError(ServeAppError):
    """An unknown study, job or trial was named."""

    status_code = 404


class ConflictError(ServeAppError):
    """The request conflicts with the current state (finished trial, cancelled job, ...)."""

    status_code = 409


class UnauthorizedError(ServeAppError):
    """The bearer token is missing or wrong."""

    status_code = 401


class PayloadTooLargeError(ServeAppError):
    """The request body is larger than the configured limit."""

    status_code = 413


class ServiceUnavailableError(ServeAppError):
    """A study actor or the database could not be reached; retrying may succeed."""

    status_code = 503


def status_code_for(error: BaseException) -> int:
    """The HTTP status code that answers ``error``."""
    if isinstance(error, ServeAppError):
        return error.status_code
    if isinstance(error, ConfigError):
        return 422
    if isinstance(error, StorageError):
        return 503
    return 500


def error_response(status_code: int, detail: object) -> JSONResponse:
    """The JSON error body ``{"detail": ...}`` with ``status_code``."""
    headers = {"WWW-Authenticate": "Bearer"} if status_code == 401 else None
    return JSONResponse(status_code=status_code, content={"detail": detail}, headers=headers)


def format_validation_errors(errors: Sequence[Any]) -> str:
    """Turns pydantic/FastAPI validation errors into one readable sentence per problem.

    Args:
        errors: The ``errors()`` list of a ``RequestValidationError``.

    Returns:
        ``"parameters[2]: parameter 'x' (float) needs both 'low' and 'high' bounds; ..."``.
    """
    parts: list[str] = []
    for error in errors:
        loc = [str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path")]
        where = ""
        for part in loc:
            where += f"[{part}]" if part.isdigit() else (f".{part}" if where else part)
        message = str(error.get("msg", "invalid value"))
        message = message.removeprefix("Value error, ")
        if error.get("type") == "json_invalid":
            message = "request body is not valid JSON"
        elif error.get("type") in ("literal_error", "enum") and "input" in error:
            message = f"{message} (got {error['input']!r})"
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts) if parts else "invalid request"


async def _serve_app_error(request: Request, exc: Exception) -> JSONResponse:
    status = status_code_for(exc)
    if status >= 500:
        logger.error("%s %s failed: %s", request.method, request.url.path, exc, exc_info=exc)
    return error_response(status, str(exc))


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(422, format_validation_errors(exc.errors()))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return error_response(exc.status_code, exc.detail)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.error("%s %s crashed", request.method, request.url.path, exc_info=exc)
    return error_response(500, f"internal error ({type(exc).__name__}); see the server log")


def install_error_handlers(app: FastAPI) -> None:
    """Registers the JSON error handlers on ``app``."""
    app.add_exception_handler(MiproError, _serve_app_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
