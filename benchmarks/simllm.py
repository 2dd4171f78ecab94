"""A simulated OpenAI-compatible LLM for the synthetic task, on `mipro_ray.testing.FakeLLMServer`.

`SimLLM` wraps a `FakeLLMServer` (real HTTP on loopback, a fixed latency and a hard cap on
requests in flight beyond which it answers 429, like a provider) with a responder that:

1. reads the request with a prompt dialect (`benchmarks.dialects`: DSPy's ChatAdapter,
   mipro_ray's prompts, or plain);
2. picks the first matching `Route` (predicate on the parsed prompt) — task call, instruction
   proposal, dataset summary, program description — and lets its handler fill the output
   fields;
3. renders the values in the client's own answer format.

Task answers follow `benchmarks.task` (deterministic per configuration and item); proposal
and summary answers are deterministic per prompt text and temperature, so different samples
differ. The responder also records a timeline (arrival = answer time - latency: the fake
server sleeps the latency before calling the responder) from which `benchmarks.timeline`
derives calls by phase and the peak and mean number of calls in flight.

Run it as its own process, so that its CPU and GIL do not count against the client being
measured: ``python -m benchmarks.simllm --latency 0.5 --cap 16`` prints one JSON line with
``base_url`` and ``control_url`` and serves until its stdin closes. The control API (see
`benchmarks.simproc.SimControl`) sets named time marks and returns window statistics.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import parse_qs, urlparse

from typing_extensions import Self

from benchmarks import task
from benchmarks.dialects import DEFAULT_DIALECTS, Dialect, ParsedPrompt, parse_prompt
from benchmarks.timeline import CallRecord, window_stats
from mipro_ray.testing import FakeLLMServer, FakeRequest

__all__ = ["DEFAULT_ROUTES", "Route", "SimLLM", "main"]

Handler = Callable[[ParsedPrompt, FakeRequest], dict[str, str]]


@dataclass(frozen=True)
class Route:
    """A kind of request: how to recognise it and how to answer it.

    Attributes:
        kind: Name recorded in the timeline (``"task"`` is the task itself).
        predicate: Whether a parsed prompt is of this kind.
        handler: Output field values for the prompt (fields it omits are answered ``"n/a"``).
    """

    kind: str
    predicate: Callable[[ParsedPrompt], bool]
    handler: Handler


def _field_like(prompt: ParsedPrompt, *needles: str) -> str | None:
    """The first output field whose name contains one of ``needles``."""
    for name in prompt.output_fields:
        if any(n in name.lower() for n in needles):
            return name
    return None


def _sample_seed(prompt: ParsedPrompt, request: FakeRequest) -> str:
    # Prompt and sampling settings: a new tip, demo set or temperature gives a new sample.
    return f"{prompt.text}\x1ftemperature={request.temperature}\x1ftop_p={request.top_p}"


def _answer_task(prompt: ParsedPrompt, request: FakeRequest) -> dict[str, str]:
    demos, item = task.demos_in_text(prompt.text)
    assert item is not None  # guaranteed by the route's predicate
    label = task.answer_label(prompt.instruction, demos, item)
    target = _field_like(prompt, "label", "answer") or prompt.output_fields[-1]
    values = {name: "I read the item code and pick its label." for name in prompt.output_fields}
    values[target] = label
    return values


def _answer_proposal(prompt: ParsedPrompt, request: FakeRequest) -> dict[str, str]:
    target = _field_like(prompt, "instruction")
    assert target is not None
    return {target: task.propose_instruction(_sample_seed(prompt, request))}


def _answer_summary(prompt: ParsedPrompt, request: FakeRequest) -> dict[str, str]:
    text = task.dataset_observations(_sample_seed(prompt, request))
    return {name: text for name in prompt.output_fields}


def _answer_description(prompt: ParsedPrompt, request: FakeRequest) -> dict[str, str]:
    text = task.program_description(_sample_seed(prompt, request))
    return {name: text for name in prompt.output_fields}


DEFAULT_ROUTES: tuple[Route, ...] = (
    Route(
        "propose_instruction",
        lambda p: _field_like(p, "instruction") is not None,
        _answer_proposal,
    ),
    Route(
        "dataset_summary",
        lambda p: _field_like(p, "observation", "summary") is not None,
        _answer_summary,
    ),
    Route(
        "program_description",
        lambda p: _field_like(p, "description") is not None,
        _answer_description,
    ),
    Route(
        "task",
        lambda p: bool(p.output_fields) and task.ITEM_RE.search(p.last_user) is not None,
        _answer_task,
    ),
)
"""Tried in order; proposals come first because their prompts quote task demos."""


class SimLLM:
    """The simulated LLM: a `FakeLLMServer` with the synthetic task's responder and a timeline.

    Args:
        latency_s: Latency of every answered request.
        max_concurrency: Requests in flight beyond this get HTTP 429.
        seed: Seed of the fake server (its fault draws; answers do not depend on it).
        routes: Request kinds, tried in order (default `DEFAULT_ROUTES`).
        dialects: Prompt dialects, tried in order.
    """

    def __init__(
        self,
        *,
        latency_s: float,
        max_concurrency: int,
        seed: int = 0,
        routes: Sequence[Route] = DEFAULT_ROUTES,
        dialects: Sequence[Dialect] = DEFAULT_DIALECTS,
    ) -> None:
        self.latency_s = latency_s
        self.max_concurrency = max_concurrency
        self._routes = tuple(routes)
        self._dialects = tuple(dialects)
        self._lock = threading.Lock()
        self._records: list[CallRecord] = []
        self._marks: dict[str, float] = {}
        self.server = FakeLLMServer(
            responder=self._respond,
            latency_s=latency_s,
            max_concurrency=max_concurrency,
            seed=seed,
        )

    def __enter__(self) -> Self:
        self.server.start()
        self.mark("start")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.server.stop()

    @property
    def base_url(self) -> str:
        """The OpenAI base URL of the server."""
        return self.server.base_url

    def respond(self, request: FakeRequest) -> tuple[str, str, str]:
        """Answers one request; returns (answer text, kind, dialect name). Pure: no recording."""
        dialect, prompt = parse_prompt(request.messages, request.response_format, self._dialects)
        for route in self._routes:
            if route.predicate(prompt):
                values = route.handler(prompt, request)
                filled = {name: values.get(name, "n/a") for name in prompt.output_fields}
                return dialect.format_answer(prompt, filled), route.kind, dialect.name
        filled = {name: "n/a" for name in prompt.output_fields}
        return dialect.format_answer(prompt, filled), "other", dialect.name

    def _respond(self, request: FakeRequest) -> str:
        end = time.monotonic()
        text, kind, dialect = self.respond(request)
        with self._lock:
            self._records.append(CallRecord(end - self.latency_s, end, kind, dialect))
        return text

    def mark(self, name: str) -> float:
        """Records the current time under ``name`` (overwriting) and returns it."""
        now = time.monotonic()
        with self._lock:
            self._marks[name] = now
        return now

    def stats(self, start: str = "start", end: str | None = None) -> dict[str, object]:
        """Window statistics between two marks (``end=None``: now), plus server counters.

        Raises:
            KeyError: If a mark was never set.
        """
        with self._lock:
            t0 = self._marks[start]
            t1 = self._marks[end] if end is not None else time.monotonic()
            records = list(self._records)
        result = window_stats(records, t0, t1)
        result["server"] = {
            "requests": self.server.requests,
            "peak_in_flight": self.server.peak_in_flight,
            "by_status": {str(k): v for k, v in self.server.by_status.items()},
            "prompt_tokens": self.server.prompt_tokens,
            "completion_tokens": self.server.completion_tokens,
        }
        result["latency_s"] = self.latency_s
        result["max_concurrency"] = self.max_concurrency
        return result


def _control_handler(sim: SimLLM) -> type[BaseHTTPRequestHandler]:
    class ControlHandler(BaseHTTPRequestHandler):
        def _reply(self, status: int, body: Mapping[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            url = urlparse(self.path)
            query = parse_qs(url.query)
            if url.path == "/mark" and query.get("name"):
                self._reply(200, {"mark": query["name"][0], "t": sim.mark(query["name"][0])})
            else:
                self._reply(404, {"error": f"unknown control call {self.path}"})

        def do_GET(self) -> None:
            url = urlparse(self.path)
            query = parse_qs(url.query)
            if url.path != "/stats":
                self._reply(404, {"error": f"unknown control call {self.path}"})
                return
            start = query.get("start", ["start"])[0]
            end = query.get("end", [None])[0]
            try:
                self._reply(200, sim.stats(start, end))
            except KeyError as exc:
                self._reply(400, {"error": f"mark {exc} was never set"})

        def log_message(self, format: str, *args: object) -> None:
            return  # keep the benchmark's stderr for the systems under test

    return ControlHandler


def main(argv: Sequence[str] | None = None) -> int:
    """Serves a `SimLLM` and its control API until stdin closes."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.simllm", description=__doc__)
    parser.add_argument("--latency", type=float, required=True, help="seconds per request")
    parser.add_argument("--cap", type=int, required=True, help="max requests in flight")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    with SimLLM(latency_s=args.latency, max_concurrency=args.cap, seed=args.seed) as sim:
        control = ThreadingHTTPServer(("127.0.0.1", 0), _control_handler(sim))
        thread = threading.Thread(target=control.serve_forever, daemon=True)
        thread.start()
        host, port = control.server_address[:2]
        endpoints = {"base_url": sim.base_url, "control_url": f"http://{host!s}:{port}"}
        sys.stdout.write(json.dumps(endpoints) + "\n")
        sys.stdout.flush()
        sys.stdin.read()  # the parent closes our stdin to stop us
        control.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
