"""Server-side MIPRO jobs: one detached, named Ray actor per run, with persisted status and events.

A job is a `RunSpec` executed by `run_spec` in a background thread of its own actor
(``mipro_job:<id>`` in the ``mipro_ray`` namespace), never inside the request that created it.
The actor is detached, so it outlives the process that started it (a Serve replica, a
redeploy); all jobs of the cluster share the cluster-wide LM limiter of each endpoint.

The actor keeps the job's `JobStatus` and an append-only list of `JobEvent` s (phase changes and
finished trials) and writes both to the run directory after every change:

| file | content |
|---|---|
| ``job_status.json`` | the last `JobStatus` |
| ``job_events.jsonl`` | every `JobEvent`, one JSON object a line |

Once the job is terminal (finished, failed or cancelled) and persisted, the actor lingers
briefly for readers of the last events and exits; `read_status` and `read_events` serve the
job from its run directory afterwards.

API keys are named environment variables on the cluster, never values: `find_secrets` flags
spec values that look like literal keys, so a server can refuse them before storing anything.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import ray
from pydantic import BaseModel, ConfigDict, JsonValue, ValidationError
from ray.actor import ActorHandle

from mipro_ray.errors import MiproError, StorageError
from mipro_ray.optimizer import Phase, Progress, RunEvent
from mipro_ray.ray_limiter import NAMESPACE
from mipro_ray.rundir import RunDir
from mipro_ray.runner import run_spec
from mipro_ray.spec import RunSpec

logger = logging.getLogger(__name__)

TERMINAL_PHASES: frozenset[Phase] = frozenset({"finished", "failed", "cancelled"})
STATUS_FILE = "job_status.json"
EVENTS_FILE = "job_events.jsonl"

_KEY_PATTERNS = (
    re.compile(r"\bsk-[A-Za-z0-9_\-]{16,}"),  # OpenAI, Anthropic (sk-ant-...), DeepSeek
    re.compile(r"\b(?:AIza|ghp_|gho_|github_pat_|xox[abp]-|hf_|gsk_|AKIA)[A-Za-z0-9_\-]{12,}"),
    re.compile(r"\bBearer\s+[A-Za-z0-9._\-]{12,}", re.I),
    re.compile(r"://[^/\s:@]+:[^/\s@]+@"),  # credentials in a URL
    re.compile(r"[?&](?:api[_-]?key|key|token|access[_-]?token)=", re.I),
)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SECRET_FIELDS = frozenset({"api_key", "apikey", "api_token", "access_token", "secret", "password"})


class JobStatus(Progress):
    """Where a job stands: the run's `Progress` plus the job's identity, timing and outcome.

    Attributes:
        job_id: The job's id.
        run_dir: Where the run writes its results.
        created_at: Unix time the job was created.
        finished_at: Unix time it reached a terminal phase.
        eta_s: Estimated seconds until the search ends (while searching).
        stop_reason: Why the search ended (terminal phases).
        error: What went wrong (failed jobs): the error type and message.
        cancel_requested: Whether a cancellation was asked for.
        events: Number of events so far.
        baseline_test_score: The unoptimized program's score on the test split.
        optimized_test_score: The optimized program's score on the test split.
    """

    job_id: str
    run_dir: str
    created_at: float
    finished_at: float | None = None
    eta_s: float | None = None
    stop_reason: str | None = None
    error: str | None = None
    cancel_requested: bool = False
    events: int = 0
    baseline_test_score: float | None = None
    optimized_test_score: float | None = None

    @property
    def terminal(self) -> bool:
        """Whether the job has ended (finished, failed or cancelled)."""
        return self.phase in TERMINAL_PHASES


class JobEvent(RunEvent):
    """A `RunEvent` of a job, numbered from 0 in order (``seq``) and timestamped (Unix time)."""

    seq: int
    time: float


class EventBatch(BaseModel):
    """What `JobActor.events` answers: the new events and the job's status after them."""

    model_config = ConfigDict(frozen=True)

    events: list[JobEvent]
    status: JobStatus


def job_actor_name(job_id: str) -> str:
    """The Ray actor name of a job."""
    return f"mipro_job:{job_id}"


def find_secrets(value: JsonValue, path: str = "") -> list[str]:
    """Dotted paths of values in a JSON document that look like literal credentials.

    Flags strings that look like API keys, bearer tokens, credentials in URLs or ``key=``
    query parameters; non-empty values of fields named like secrets (``api_key``, ``token``,
    ...); and an ``api_key_env`` that is not an environment variable name. The values themselves
    are never returned, so the answer is safe to show and log.
    """
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            lowered = str(key).lower()
            named_secret = lowered in _SECRET_FIELDS and item not in (None, "")
            bad_env = lowered == "api_key_env" and isinstance(item, str)
            if named_secret or (bad_env and not _ENV_NAME.match(str(item))):
                found.append(where)
            else:
                found.extend(find_secrets(item, where))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found.extend(find_secrets(item, f"{path}[{i}]" if path else f"[{i}]"))
    elif isinstance(value, str) and any(p.search(value) for p in _KEY_PATTERNS):
        found.append(path or "(top level)")
    return found


def custom_code_fields(spec: RunSpec) -> list[str]:
    """Paths of the spec's fields that would import and run user code."""
    fields = []
    if spec.program.class_path is not None:
        fields.append("program.class_path")
    if ":" in spec.metric.name:
        fields.append("metric.name")
    return fields


class JobActor:
    """Runs one job in a background thread; the Ray actor class is `RemoteJobActor`.

    Args:
        job_id: The job's id.
        spec: The job (its ``run_dir`` is ignored: ``run_dir`` below wins).
        run_dir: The run directory.
        created_at: Unix time of the job's creation.
        allow_custom: Allow user code (``class_path`` programs, ``module:function`` metrics).
        linger_s: Seconds the actor stays after the terminal state is persisted.
    """

    def __init__(
        self,
        job_id: str,
        spec: RunSpec,
        run_dir: str,
        *,
        created_at: float,
        allow_custom: bool,
        linger_s: float = 2.0,
    ) -> None:
        self._spec = spec.model_copy(update={"run_dir": run_dir})
        self._allow_custom = allow_custom
        self._linger_s = linger_s
        self._cond = threading.Condition()
        self._cancel = threading.Event()
        self._events: list[JobEvent] = []
        self._status = JobStatus(
            phase="queued", job_id=job_id, run_dir=run_dir, created_at=created_at
        )
        self._search_started: float | None = None
        self._run_dir: RunDir | None = None
        self._thread = threading.Thread(target=self._main, name=f"mipro-job-{job_id}", daemon=True)
        self._thread.start()

    # -- remote methods ------------------------------------------------------------------------

    def status(self) -> JobStatus:
        """The job's current status."""
        with self._cond:
            return self._status

    def events(self, after: int, timeout_s: float) -> EventBatch:
        """Events numbered ``after`` and up; waits up to ``timeout_s`` for one if there is none.

        Answers at once when the job is terminal.
        """
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while len(self._events) <= after and not self._status.terminal:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return EventBatch(events=self._events[max(after, 0) :], status=self._status)

    def cancel(self) -> JobStatus:
        """Asks the run to stop (running trials and LM calls stop); keeps what finished."""
        self._cancel.set()
        with self._cond:
            if not self._status.terminal:
                self._status = self._status.model_copy(update={"cancel_requested": True})
            return self._status

    def wait(self, timeout_s: float) -> JobStatus:
        """Waits up to ``timeout_s`` for a terminal phase; returns the status either way."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not self._status.terminal:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return self._status

    # -- the run -------------------------------------------------------------------------------

    def _main(self) -> None:
        try:
            self._run_dir = RunDir(self._status.run_dir)
            self._run_dir.write_json("job_spec.json", self._spec.model_dump(mode="json"))
            self._persist()
            if self._cancel.is_set():
                self._end("cancelled", stop_reason="cancelled before the run started")
                return
            outcome = run_spec(
                self._spec,
                on_event=self._on_event,
                cancel=self._cancel,
                allow_custom=self._allow_custom,
            )
        except MiproError as exc:
            logger.warning("job %s failed: %s", self._status.job_id, exc)
            self._end("failed", error=f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # a bug: the job fails with its reason, the log has the trace
            logger.exception("job %s crashed", self._status.job_id)
            self._end("failed", error=f"internal error ({type(exc).__name__}): {exc}")
        else:
            result = outcome.result
            self._end(
                "cancelled" if result.stop_reason == "cancelled" else "finished",
                stop_reason=result.stop_reason,
                best_full_score=result.best_score,
                baseline_score=result.baseline_score,
                baseline_test_score=outcome.baseline_test_score,
                optimized_test_score=outcome.optimized_test_score,
            )
        finally:
            self._exit_later()

    def _on_event(self, event: RunEvent) -> None:
        p = event.progress
        if event.kind == "phase" and p.phase == "searching" and self._search_started is None:
            self._search_started = time.monotonic()
        update: dict[str, Any] = p.model_dump()
        if p.phase in TERMINAL_PHASES:
            # The job ends when run_spec returns (after test scoring): see `_end`.
            update.pop("phase")
            self._publish(None, update)
            return
        update["eta_s"] = self._eta(p)
        update["elapsed_s"] = time.time() - self._status.created_at
        self._publish(event, update)

    def _eta(self, p: Progress) -> float | None:
        if p.phase != "searching" or self._search_started is None or p.trials_done == 0:
            return None
        per_trial = (time.monotonic() - self._search_started) / p.trials_done
        return max(p.trials_planned - p.trials_done, 0) * per_trial

    def _end(self, phase: Phase, **update: Any) -> None:
        now = time.time()
        with self._cond:
            update.update(
                phase=phase, finished_at=now, eta_s=None, elapsed_s=now - self._status.created_at
            )
            status = self._status.model_copy(update=update)
        message = f"job {phase}"
        if status.error is not None:
            message += f": {status.error}"
        elif status.stop_reason is not None:
            message += f" ({status.stop_reason})"
        progress = Progress.model_validate(status.model_dump(include=_PROGRESS))
        self._publish(RunEvent(kind="phase", message=message, progress=progress), update)

    def _publish(self, event: RunEvent | None, update: dict[str, Any]) -> None:
        with self._cond:
            if event is not None:
                job_event = JobEvent(
                    **event.model_dump(exclude={"progress", "trial"}),
                    progress=event.progress,
                    trial=event.trial,
                    seq=len(self._events),
                    time=time.time(),
                )
                self._events.append(job_event)
                update["events"] = len(self._events)
            self._status = self._status.model_copy(update=update)
            self._cond.notify_all()
        try:
            self._persist()
        except StorageError:
            # The run itself writes to the same directory and will fail loudly; the in-memory
            # status still serves readers.
            logger.exception("job %s: cannot persist its status", self._status.job_id)

    def _persist(self) -> None:
        if self._run_dir is None:
            return
        with self._cond:
            status = self._status.model_dump(mode="json")
            lines = "".join(e.model_dump_json() + "\n" for e in self._events)
        self._run_dir.write_bytes(EVENTS_FILE, lines.encode())
        self._run_dir.write_json(STATUS_FILE, status)

    def _exit_later(self) -> None:
        time.sleep(self._linger_s)
        logger.info("job %s: %s; the actor exits", self._status.job_id, self._status.phase)
        ray.get_runtime_context().current_actor.__ray_terminate__.remote()


_PROGRESS = set(Progress.model_fields)

RemoteJobActor = ray.remote(JobActor)
"""The Ray actor class of `JobActor` (threaded: status reads never wait for the run)."""


def start_job(
    job_id: str,
    spec: RunSpec,
    *,
    run_dir: str,
    allow_custom: bool,
    num_cpus: float = 0.0,
    linger_s: float = 2.0,
) -> ActorHandle[JobActor]:
    """Starts a job's detached actor and returns at once (the actor starts asynchronously).

    Args:
        job_id: A new, unique id (also the actor's name, see `job_actor_name`).
        spec: The job.
        run_dir: Where the run writes (overrides ``spec.run_dir``).
        allow_custom: Allow user code in the spec.
        num_cpus: CPUs reserved for the job's driver (its trials reserve their own).
        linger_s: Seconds the actor stays after the job ended.
    """
    handle: Any = RemoteJobActor.options(
        name=job_actor_name(job_id),
        namespace=NAMESPACE,
        lifetime="detached",
        num_cpus=num_cpus,
        max_concurrency=32,
    ).remote(
        job_id,
        spec,
        run_dir,
        created_at=time.time(),
        allow_custom=allow_custom,
        linger_s=linger_s,
    )
    return handle  # type: ignore[no-any-return]


def get_job_actor(job_id: str) -> ActorHandle[JobActor] | None:
    """The live actor of a job, or None once it has exited (blocking: a GCS lookup)."""
    try:
        handle: Any = ray.get_actor(job_actor_name(job_id), namespace=NAMESPACE)
    except ValueError:
        return None
    return handle  # type: ignore[no-any-return]


def read_status(run_dir: str) -> JobStatus | None:
    """The last persisted status of a job, or None if it never wrote one.

    Raises:
        StorageError: the file is unreadable.
    """
    raw = RunDir(run_dir).read_json(STATUS_FILE)
    if raw is None:
        return None
    try:
        return JobStatus.model_validate(raw)
    except ValidationError as exc:
        raise StorageError(f"{STATUS_FILE} in '{run_dir}' is not a job status: {exc}") from exc


def read_events(run_dir: str, after: int = 0) -> list[JobEvent]:
    """The persisted events of a job numbered ``after`` and up.

    Raises:
        StorageError: the file is unreadable.
    """
    data = RunDir(run_dir).read_bytes(EVENTS_FILE)
    return [] if data is None else list(_parse_events(data, run_dir, after))


def _parse_events(data: bytes, run_dir: str, after: int) -> Iterator[JobEvent]:
    for n, line in enumerate(data.decode().splitlines()):
        if n < after or not line.strip():
            continue
        try:
            yield JobEvent.model_validate(json.loads(line))
        except (ValueError, ValidationError) as exc:
            raise StorageError(f"{EVENTS_FILE} in '{run_dir}' line {n + 1}: {exc}") from exc


class JobResult(BaseModel):
    """The outcome of a finished (or cancelled) job, from its run directory.

    Attributes:
        job_id: The job.
        phase: ``finished`` or ``cancelled`` (a cancelled job keeps what finished).
        best_score: Full-validation score of ``program``.
        baseline_score: The unoptimized program's full-validation score.
        baseline_test_score: The unoptimized program on the test split (None without one).
        optimized_test_score: ``program`` on the test split.
        stop_reason: Why the search ended.
        program: The best program's state (``mipro_ray.load_program`` reads it).
        ax_program: The same in the shape Ax programs apply.
        summary: The run's ``result.json`` (params, usage by phase, projection, timings).
    """

    model_config = ConfigDict(frozen=True)

    job_id: str
    phase: Phase
    best_score: float | None
    baseline_score: float | None
    baseline_test_score: float | None
    optimized_test_score: float | None
    stop_reason: str | None
    program: JsonValue
    ax_program: JsonValue
    summary: JsonValue


def read_result(status: JobStatus) -> JobResult:
    """The result a terminal job left in its run directory.

    Raises:
        StorageError: the run wrote no result (it failed before the end, or still runs).
    """
    rd = RunDir(status.run_dir)
    program, ax, summary = (
        rd.read_json(n) for n in ("best_program.json", "best_program.ax.json", "result.json")
    )
    if program is None or summary is None:
        raise StorageError(f"the run in '{status.run_dir}' wrote no result")
    return JobResult(
        job_id=status.job_id,
        phase=status.phase,
        best_score=status.best_full_score,
        baseline_score=status.baseline_score,
        baseline_test_score=status.baseline_test_score,
        optimized_test_score=status.optimized_test_score,
        stop_reason=status.stop_reason,
        program=_json(program),
        ax_program=_json(ax),
        summary=_json(summary),
    )


def _json(value: object) -> JsonValue:
    loaded: JsonValue = json.loads(json.dumps(value))
    return loaded
