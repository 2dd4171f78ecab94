"""No told trial is lost when the process holding a study dies or Serve is redeployed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from serve_app.study_host import host_index, host_name

pytestmark = [pytest.mark.ray, pytest.mark.slow]

AxRequest = Callable[..., dict[str, Any]]


def _kill_host(harness: Any, app: str, study: str, *, restart: bool) -> None:
    import ray

    settings = harness.apps[app][0]
    actor = ray.get_actor(
        host_name(settings, host_index(study, settings.study_hosts)),
        namespace=settings.actor_namespace,
    )
    ray.kill(actor, no_restart=not restart)


def _evaluate(client: httpx.Client, app: str, name: str, number: int, value: float) -> int:
    response = client.post(
        f"{app}/studies/{name}/evaluate",
        json={"study_name": name, "trial_number": number, "value": value},
    )
    return response.status_code


def test_killed_study_host_rebuilds_from_the_database(
    sqlite_app: str,
    serve_harness: Any,
    client: httpx.Client,
    ax_request: AxRequest,
    name: str,
) -> None:
    client.post(f"{sqlite_app}/optimize", json=ax_request(name, n_trials=10)).raise_for_status()
    first = client.post(f"{sqlite_app}/studies/{name}/suggest").json()
    second = client.post(f"{sqlite_app}/studies/{name}/suggest").json()
    assert _evaluate(client, sqlite_app, name, first["trial_number"], 0.4) == 200

    _kill_host(serve_harness, "sqlite", name, restart=True)

    # The RUNNING trial suggested before the crash can still be told, by number.
    assert _evaluate(client, sqlite_app, name, second["trial_number"], 0.8) == 200
    assert _evaluate(client, sqlite_app, name, first["trial_number"], 0.1) == 409
    third = client.post(f"{sqlite_app}/studies/{name}/suggest").json()
    assert third["trial_number"] == 2
    results = client.get(f"{sqlite_app}/studies/{name}/results").json()
    assert [(t["number"], t["value"]) for t in results["trials"]] == [
        (0, 0.4),
        (1, 0.8),
        (2, None),
    ]
    assert results["trials"][1]["params"] == second["params"]
    assert results["best_value"] == 0.8


@pytest.mark.parametrize("app_name", ["sqlite", pytest.param("pg", marks=pytest.mark.postgres)])
def test_study_survives_serve_shutdown_and_redeploy(
    request: pytest.FixtureRequest,
    serve_harness: Any,
    client: httpx.Client,
    ax_request: AxRequest,
    name: str,
    app_name: str,
) -> None:
    app = request.getfixturevalue(f"{app_name}_app")
    job_id = client.post(f"{app}/optimize", json=ax_request(name, n_trials=3)).json()["job_id"]
    told = client.post(f"{app}/studies/{name}/suggest").json()
    assert _evaluate(client, app, name, told["trial_number"], 0.5) == 200
    pending = client.post(f"{app}/studies/{name}/suggest").json()

    serve_harness.restart()
    # Study hosts are detached and outlive Serve; kill this one too, so nothing in memory
    # survives: everything below comes from the database.
    _kill_host(serve_harness, app_name, name, restart=False)

    assert _evaluate(client, app, name, pending["trial_number"], 0.7) == 200
    last = client.post(f"{app}/studies/{name}/suggest").json()
    assert last["trial_number"] == 2
    assert _evaluate(client, app, name, last["trial_number"], 0.6) == 200
    job = client.get(f"{app}/jobs/{job_id}").json()
    assert job["status"] == "completed"
    assert job["progress"]["best_value"] == 0.7
    results = client.get(f"{app}/studies/{name}/results").json()
    assert [t["value"] for t in results["trials"]] == [0.5, 0.7, 0.6]
