"""PostgreSQL with 2 replicas: shared studies, distinct trial numbers under concurrency."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.postgres]

AxRequest = Callable[..., dict[str, Any]]


async def test_20_concurrent_suggests_give_20_distinct_trials(
    pg_app: str, ax_request: AxRequest, name: str
) -> None:
    async with httpx.AsyncClient(timeout=60) as client:
        created = await client.post(f"{pg_app}/optimize", json=ax_request(name, n_trials=20))
        assert created.status_code == 200
        responses = await asyncio.gather(
            *(client.post(f"{pg_app}/studies/{name}/suggest") for _ in range(20))
        )
        assert [r.status_code for r in responses] == [200] * 20
        numbers = sorted(r.json()["trial_number"] for r in responses)
        assert numbers == list(range(20))

        evaluations = await asyncio.gather(
            *(
                client.post(
                    f"{pg_app}/studies/{name}/evaluate",
                    json={"study_name": name, "trial_number": n, "value": n / 20},
                )
                for n in numbers
            )
        )
        assert [r.status_code for r in evaluations] == [200] * 20
        results = (await client.get(f"{pg_app}/studies/{name}/results")).json()
    assert [t["number"] for t in results["trials"]] == list(range(20))
    assert all(t["state"] == "COMPLETE" for t in results["trials"])
    assert results["best_value"] == 19 / 20


def test_both_replicas_serve_the_same_study(
    pg_app: str, client: httpx.Client, ax_request: AxRequest, name: str
) -> None:
    created = client.post(f"{pg_app}/optimize", json=ax_request(name, n_trials=1000))
    created.raise_for_status()
    replicas: set[str] = set()
    told = 0
    # Serve's router prefers the replica with the shorter cached queue; a cached length may
    # be stale for up to 10 s (RAY_SERVE_QUEUE_LENGTH_CACHE_TIMEOUT_S), so keep going until
    # both replicas answered, within a bound.
    deadline = time.monotonic() + 45
    while (len(replicas) < 2 or told < 24) and time.monotonic() < deadline:
        suggestion = client.post(f"{pg_app}/studies/{name}/suggest")
        assert suggestion.status_code == 200
        replicas.add(suggestion.headers.get("x-mipro-replica", ""))
        number = suggestion.json()["trial_number"]
        evaluation = client.post(
            f"{pg_app}/studies/{name}/evaluate",
            json={"study_name": name, "trial_number": number, "value": 0.5},
        )
        assert evaluation.status_code == 200
        replicas.add(evaluation.headers.get("x-mipro-replica", ""))
        told += 1
    assert len(replicas) == 2, f"only replica {replicas} answered in 45 s"
    results = client.get(f"{pg_app}/studies/{name}/results").json()
    assert [t["number"] for t in results["trials"]] == list(range(told))
    assert all(t["state"] == "COMPLETE" for t in results["trials"])
    job = client.get(f"{pg_app}/jobs/{created.json()['job_id']}").json()
    assert job["status"] == "running"
    assert job["progress"]["finished"] == told


def test_the_study_is_a_real_optuna_study_in_postgres(
    pg_app: str, client: httpx.Client, ax_request: AxRequest, name: str, postgres_url: str
) -> None:
    import optuna

    client.post(f"{pg_app}/optimize", json=ax_request(name)).raise_for_status()
    number = client.post(f"{pg_app}/studies/{name}/suggest").json()["trial_number"]
    client.post(
        f"{pg_app}/studies/{name}/evaluate",
        json={"trial_number": number, "value": 0.25, "intermediate_values": {"0": 0.2, "1": 0.3}},
    ).raise_for_status()
    study = optuna.load_study(study_name=name, storage=postgres_url)
    assert study.best_value == 0.25
    assert study.trials[0].intermediate_values == {0: 0.2, 1: 0.3}
    assert set(study.trials[0].params) == {
        "temperature",
        "bootstrappedDemos",
        "instruction",
        "labeledExamples",
    }
