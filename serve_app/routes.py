"""The FastAPI app: the Ax optimizer-service endpoints, auth and the body-size limit."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Annotated

from fastapi import Depends, FastAPI, Path, Query, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.errors import (
    PayloadTooLargeError,
    UnauthorizedError,
    error_response,
    install_error_handlers,
)
from serve_app.mipro_jobs import mipro_jobs_router
from serve_app.models import (
    EvaluationRequest,
    EvaluationResponse,
    Health,
    JobResponse,
    JobStatusResponse,
    OptimizationRequest,
    OptimizationResult,
    SuggestResponse,
)
from serve_app.models import (
    Message as MessageOut,
)
from serve_app.settings import Settings
from serve_app.studies import StudyService

StudyName = Annotated[str, Path(min_length=1, max_length=256)]


def _service(request: Request) -> StudyService:
    service: StudyService = request.app.state.service
    return service


Service = Annotated[StudyService, Depends(_service)]


def create_app(service: StudyService, settings: Settings, *, replica: str = "local") -> FastAPI:
    """Builds the ASGI app of one replica.

    Args:
        service: The replica's study service.
        settings: Auth token and body limit.
        replica: This replica's id, sent back in the ``X-Mipro-Replica`` header.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Start the study hosts now, so no client request waits for a process to start.
        await service.warm_up()
        yield

    app = FastAPI(
        lifespan=lifespan,
        title="mipro-ray optimizer service",
        description="Drop-in optimizer endpoint for Ax's AxMiPRO (optimizerEndpoint), with "
        "durable studies shared by every replica.",
        version="0.1.0",
    )
    app.state.service = service
    install_error_handlers(app)
    app.include_router(mipro_jobs_router(settings))
    app.add_middleware(
        _GuardMiddleware,
        token=None if settings.auth_token is None else settings.auth_token.get_secret_value(),
        max_body_bytes=settings.max_body_bytes,
        replica=replica,
    )

    @app.get("/health", response_model=Health)
    async def health() -> Health:
        """Liveness; the only endpoint that needs no token."""
        return Health(timestamp=datetime.now(timezone.utc))

    @app.post("/optimize", response_model=JobResponse)
    async def optimize(body: OptimizationRequest, svc: Service) -> JobResponse:
        """Creates a study and a pending job; the client then suggests and evaluates."""
        return await svc.create(body)

    @app.get("/jobs", response_model=list[JobStatusResponse])
    async def list_jobs(
        svc: Service, limit: Annotated[int, Query(ge=1, le=1000)] = 100
    ) -> list[JobStatusResponse]:
        """The most recent jobs, newest first."""
        return await svc.list_jobs(limit)

    @app.get("/jobs/{job_id}", response_model=JobStatusResponse)
    async def get_job(job_id: str, svc: Service) -> JobStatusResponse:
        """A job's status and progress (and the results once completed)."""
        return await svc.get_job(job_id)

    @app.delete("/jobs/{job_id}", response_model=MessageOut)
    async def cancel_job(job_id: str, svc: Service) -> MessageOut:
        """Cancels a job; later suggests on its study answer 409."""
        job = await svc.cancel_job(job_id)
        return MessageOut(message=f"job {job.job_id} is {job.status.value}")

    @app.get("/studies", response_model=list[str])
    async def list_studies(svc: Service) -> list[str]:
        """Names of all studies."""
        return await svc.list_studies()

    @app.post("/studies/{study_name}/suggest", response_model=SuggestResponse)
    async def suggest(study_name: StudyName, svc: Service) -> SuggestResponse:
        """Parameters of a new trial (any body is ignored)."""
        return await svc.suggest(study_name)

    @app.post("/studies/{study_name}/evaluate", response_model=EvaluationResponse)
    async def evaluate(
        study_name: StudyName, body: EvaluationRequest, svc: Service
    ) -> EvaluationResponse:
        """Tells a trial's value by trial number; 409 if the trial is already finished."""
        return await svc.evaluate(study_name, body)

    @app.get("/studies/{study_name}/results", response_model=OptimizationResult)
    async def results(study_name: StudyName, svc: Service) -> OptimizationResult:
        """Every trial and the best one (best fields null while no trial is complete)."""
        return await svc.results(study_name)

    @app.delete("/studies/{study_name}", response_model=MessageOut)
    async def delete_study(study_name: StudyName, svc: Service) -> MessageOut:
        """Deletes a study and its trials; its job keeps its last progress."""
        await svc.delete_study(study_name)
        return MessageOut(message=f"study '{study_name}' deleted")

    return app


class _GuardMiddleware:
    """Bearer-token check (all paths but ``/health``) and request body limit, as pure ASGI."""

    def __init__(
        self, app: ASGIApp, *, token: str | None, max_body_bytes: int, replica: str
    ) -> None:
        self._replica = replica.encode()
        self._app = app
        self._token = None if token is None else f"Bearer {token}".encode()
        self._max = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        send = _TagReplica(send, self._replica)
        path: str = scope["path"]
        root: str = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        headers = dict(scope["headers"])
        if self._token is not None and path != "/health":
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self._token):
                detail = "missing or invalid bearer token (Authorization: Bearer <token>)"
                await error_response(UnauthorizedError.status_code, detail)(scope, receive, send)
                return
        length = headers.get(b"content-length")
        if length is not None:
            if length.isdigit() and int(length) > self._max:
                await self._too_large(scope, receive, send)
                return
            await self._app(scope, receive, send)
            return
        # No Content-Length (chunked): read the body here, up to the limit, then replay it.
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                await self._app(scope, _Replay(bytes(body), message, receive), send)
                return
            body += message.get("body", b"")
            more = bool(message.get("more_body", False))
            if len(body) > self._max:
                await self._too_large(scope, receive, send)
                return
        await self._app(scope, _Replay(bytes(body), None, receive), send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        detail = f"request body larger than {self._max} bytes"
        await error_response(PayloadTooLargeError.status_code, detail)(scope, receive, send)


class _TagReplica:
    """Adds ``X-Mipro-Replica`` to every answer, so operators (and tests) see who answered."""

    def __init__(self, send: Send, replica: bytes) -> None:
        self._send = send
        self._replica = replica

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [*message.get("headers", []), (b"x-mipro-replica", self._replica)]
            message = {**message, "headers": headers}
        await self._send(message)


class _Replay:
    """A ``receive`` that first returns an already read body, then defers to the real one."""

    def __init__(self, body: bytes, pending: Message | None, receive: Receive) -> None:
        self._first: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]
        if pending is not None:
            self._first.append(pending)
        self._receive = receive

    async def __call__(self) -> Message:
        if self._first:
            return self._first.pop(0)
        return await self._receive()
