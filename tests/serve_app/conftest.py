"""One Ray Serve instance per test session, with the apps the tests need deployed lazily.

Apps (each under its own route prefix on one HTTP port, built on ``ray_address``):

- ``/sqlite``: default settings on a SQLite file (body limit 64 KiB).
- ``/guarded``: its own SQLite file, a bearer token, and a 1.5 s stale-trial timeout.
- ``/pg``: PostgreSQL (``postgres_url``) with 2 replicas.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from serve_app.settings import Settings

TEST_ACTOR_NAMESPACE = "mipro_ray_serve_tests"
AUTH_TOKEN = "s3cret-test-token"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServeHarness:
    """The session's Serve instance and the apps deployed on it."""

    port: int
    apps: dict[str, tuple[Settings, int]] = field(default_factory=dict)

    def url(self, name: str) -> str:
        """Base URL of app ``name`` (what Ax calls ``optimizerEndpoint``)."""
        return f"http://127.0.0.1:{self.port}/{name}"

    def start(self) -> None:
        """Starts Serve on loopback."""
        from ray import serve

        # HeadOnly: CI's two Ray nodes share this machine, so two proxies would fight for
        # the port.
        serve.start(
            proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": self.port}
        )

    def deploy(self, name: str, settings: Settings, *, replicas: int = 1) -> str:
        """Deploys app ``name`` and waits until it answers ``/health``."""
        from ray import serve

        from serve_app import build_app

        settings = settings.model_copy(update={"num_replicas": replicas})
        serve.run(build_app(settings), name=name, route_prefix=f"/{name}")
        self.apps[name] = (settings, replicas)
        _wait_healthy(self.url(name))
        return self.url(name)

    def restart(self) -> None:
        """``serve.shutdown()``, then Serve and every app deployed again."""
        from ray import serve

        serve.shutdown()
        self.start()
        for name, (settings, replicas) in list(self.apps.items()):
            self.deploy(name, settings, replicas=replicas)


def _wait_healthy(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not become healthy: {last}")


@pytest.fixture(scope="session")
def serve_harness(ray_address: str) -> Iterator[ServeHarness]:
    """Serve on a free loopback port for the whole session; shut down at the end."""
    import ray
    from ray import serve

    harness = ServeHarness(port=_free_port())
    harness.start()
    try:
        yield harness
    finally:
        serve.shutdown()
        for actor in ray.util.list_named_actors(all_namespaces=True):
            if actor["namespace"] == TEST_ACTOR_NAMESPACE:
                ray.kill(ray.get_actor(actor["name"], namespace=TEST_ACTOR_NAMESPACE))


def _settings(data_dir: Path, **overrides: Any) -> Settings:
    return Settings(
        data_dir=data_dir,
        actor_namespace=TEST_ACTOR_NAMESPACE,
        max_body_bytes=65536,
        **overrides,
    )


@pytest.fixture(scope="session")
def sqlite_app(serve_harness: ServeHarness, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Base URL of the SQLite app."""
    return serve_harness.deploy("sqlite", _settings(tmp_path_factory.mktemp("sqlite")))


@pytest.fixture(scope="session")
def guarded_app(serve_harness: ServeHarness, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Base URL of the app with a bearer token and a 1.5 s stale-trial timeout."""
    settings = _settings(
        tmp_path_factory.mktemp("guarded"), auth_token=AUTH_TOKEN, stale_trial_seconds=1.5
    )
    return serve_harness.deploy("guarded", settings)


@pytest.fixture(scope="session")
def pg_app(
    serve_harness: ServeHarness, postgres_url: str, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """Base URL of the PostgreSQL app with 2 replicas."""
    settings = _settings(tmp_path_factory.mktemp("pg"), database_url=postgres_url)
    return serve_harness.deploy("pg", settings, replicas=2)


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    """A plain HTTP client (tests build full URLs)."""
    with httpx.Client(timeout=30) as http:
        yield http


def new_study_name() -> str:
    """A fresh study name."""
    return f"test_{uuid.uuid4().hex[:12]}"


def build_ax_request(name: str, **overrides: Any) -> dict[str, Any]:
    """A ``POST /optimize`` body of the shape Ax's AxMiPRO sends."""
    body: dict[str, Any] = {
        "study_name": name,
        "parameters": [
            {"name": "temperature", "type": "float", "low": 0.1, "high": 2.0},
            {"name": "bootstrappedDemos", "type": "int", "low": 0, "high": 3},
            {
                "name": "instruction",
                "type": "categorical",
                "choices": ["Be concise.", "Think step by step.", "Answer precisely."],
            },
            {"name": "labeledExamples", "type": "int", "low": 0, "high": 4},
        ],
        "objective": {"name": "score", "direction": "maximize"},
        "n_trials": 5,
        "sampler": "TPESampler",
        "pruner": "MedianPruner",
    }
    body.update(overrides)
    return body


AxRequest = Callable[..., dict[str, Any]]


@pytest.fixture
def name() -> str:
    """A fresh study name for this test."""
    return new_study_name()


@pytest.fixture
def ax_request() -> AxRequest:
    """Builds a ``POST /optimize`` body of Ax's shape: ``ax_request(name, **overrides)``."""
    return build_ax_request
