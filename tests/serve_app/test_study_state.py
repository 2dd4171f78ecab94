"""StudyState in-process (no Ray): write-through to Optuna's schema, rebuild, stale trials."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from pathlib import Path

import optuna
import pytest

from serve_app.database import connect, utcnow
from serve_app.errors import ConflictError, NotFoundError
from serve_app.jobs import JobRecord, JobStore
from serve_app.models import JobStatus, OptimizationRequest
from serve_app.settings import Settings
from serve_app.studies import _create_study
from serve_app.study_state import StudyState


def _create(settings: Settings, name: str, **overrides: object) -> None:
    body: dict[str, object] = {
        "study_name": name,
        "parameters": [
            {"name": "t", "type": "float", "low": 0.1, "high": 2.0, "step": 0.1},
            {"name": "k", "type": "int", "low": 1, "high": 64, "log": True},
            {"name": "c", "type": "categorical", "choices": ["a", 1, 2.5, True]},
        ],
        "objective": {"direction": "maximize"},
        "n_trials": 3,
        "metadata": {"seed": 3},
    }
    body.update(overrides)
    request = OptimizationRequest.model_validate(body)
    job = JobRecord(
        job_id=str(uuid.uuid4()),
        study_name=name,
        status=JobStatus.PENDING,
        n_trials=request.n_trials,
        request=request,
        created_at=utcnow(),
    )
    _create_study(connect(settings), request, job)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, stale_trial_seconds=0.5)


def test_what_is_written_reads_back_through_optuna(settings: Settings) -> None:
    _create(settings, "s")
    state = StudyState("s", settings)
    numbers = [state.suggest().trial_number for _ in range(3)]
    state.evaluate(numbers[0], 0.5, None)
    state.evaluate(numbers[1], 0.9, {0: 0.8, 3: 0.85})
    memory = state.results()

    stored = optuna.load_study(study_name="s", storage=settings.resolved_database_url)
    assert [t.state.name for t in stored.trials] == ["COMPLETE", "COMPLETE", "RUNNING"]
    assert [t.params for t in stored.trials] == [t.params for t in memory.trials]
    assert stored.best_value == 0.9
    assert stored.trials[1].intermediate_values == {0: 0.8, 3: 0.85}


def test_a_new_owner_rebuilds_the_study_and_continues(settings: Settings) -> None:
    _create(settings, "s")
    first = StudyState("s", settings)
    told = first.suggest()
    first.evaluate(told.trial_number, 0.25, None)
    running = first.suggest()

    second = StudyState("s", settings)  # e.g. after the host process was killed
    second.evaluate(running.trial_number, 0.75, None)
    with pytest.raises(ConflictError, match="already finished"):
        second.evaluate(told.trial_number, 1.0, None)
    assert second.suggest().trial_number == 2
    results = second.results()
    assert [t.value for t in results.trials] == [0.25, 0.75, None]
    progress = second.progress()
    assert progress is not None and progress.finished == 2


def test_stale_trials_fail_with_a_reason(settings: Settings) -> None:
    _create(settings, "s")
    state = StudyState("s", settings)
    stale = state.suggest()
    time.sleep(0.7)
    with pytest.raises(ConflictError, match="stale trial"):
        state.evaluate(stale.trial_number, 0.5, None)
    stored = optuna.load_study(study_name="s", storage=settings.resolved_database_url)
    assert stored.trials[0].state.name == "FAIL"
    assert "stale" in stored.trials[0].system_attrs["fail_reason"]


def test_pruner_prunes_a_trial_below_the_median(settings: Settings) -> None:
    _create(settings, "s", n_trials=10, pruner="MedianPruner")
    state = StudyState("s", settings)
    for value in (0.9, 0.8, 0.85, 0.95, 0.9, 0.88):
        number = state.suggest().trial_number
        state.evaluate(number, value, {1: value})
    low = state.suggest().trial_number
    answer = state.evaluate(low, 0.01, {1: 0.01})
    assert answer.pruned and answer.state == "PRUNED"
    trial = state.results().trials[low]
    assert trial.state == "PRUNED"
    assert trial.value == 0.01


def test_unknown_study_is_not_found(settings: Settings) -> None:
    connect(settings)
    with pytest.raises(NotFoundError, match="'nope' not found"):
        StudyState("nope", settings).suggest()


def _job(settings: Settings, name: str) -> JobRecord:
    job = JobStore(connect(settings).engine).for_study(name)
    assert job is not None
    return job


def test_timeout_fails_the_job_but_earlier_trials_can_still_be_told(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)  # default stale-trial limit: 600 s
    _create(settings, "s", n_trials=5, timeout=1.0)
    state = StudyState("s", settings)
    started = time.monotonic()
    told = state.suggest()
    running_by = time.monotonic()  # the job's clock started between `started` and now
    state.evaluate(told.trial_number, 0.4, None)
    late = state.suggest()
    assert time.monotonic() - started < 1.0, "too slow to suggest before the 1 s timeout"
    time.sleep(max(0.0, running_by + 1.1 - time.monotonic()))

    with pytest.raises(ConflictError) as refused:
        state.suggest()
    message = str(refused.value)
    assert "failed (timeout of 1 s was reached after 1 of 5 trials were told)" in message
    assert "GET /studies/s/results" in message
    assert "POST /optimize" in message
    job = _job(settings, "s")
    assert job.status is JobStatus.FAILED
    assert job.error == "timeout of 1 s was reached after 1 of 5 trials were told"
    assert job.started_at is not None
    assert job.completed_at == job.started_at + timedelta(seconds=1.0)

    # Work suggested before the deadline is not lost; the job stays failed.
    assert state.evaluate(late.trial_number, 0.9, None).state == "COMPLETE"
    results = state.results()
    assert [t.state for t in results.trials] == ["COMPLETE", "COMPLETE"]
    assert results.best_value == 0.9
    job = _job(settings, "s")
    assert job.status is JobStatus.FAILED
    assert job.error == "timeout of 1 s was reached after 1 of 5 trials were told"
    assert job.progress is not None and job.progress.finished == 2
    with pytest.raises(ConflictError, match="already failed: timeout of 1 s"):
        state.cancel()
    # A new owner (e.g. after a host restart) reads the same final job from the database.
    with pytest.raises(ConflictError, match="timeout of 1 s was reached"):
        StudyState("s", settings).suggest()


def test_timeout_counts_from_the_first_suggest_and_spares_a_finished_job(
    tmp_path: Path,
) -> None:
    settings = Settings(data_dir=tmp_path)
    _create(settings, "s", n_trials=2, timeout=0.5)
    state = StudyState("s", settings)
    time.sleep(0.6)  # pending: the clock has not started
    for value in (0.3, 0.6):
        state.evaluate(state.suggest().trial_number, value, None)
    assert _job(settings, "s").status is JobStatus.COMPLETED
    time.sleep(0.6)
    state.progress()
    state.results()
    job = _job(settings, "s")
    assert job.status is JobStatus.COMPLETED
    assert job.error is None


def test_a_stale_owner_cannot_revive_a_cancelled_job(settings: Settings) -> None:
    _create(settings, "s")
    stale = StudyState("s", settings)
    assert stale.progress() is not None  # loads the job while it is pending
    StudyState("s", settings).cancel()
    with pytest.raises(ConflictError, match="cannot become running"):
        stale.suggest()
    assert _job(settings, "s").status is JobStatus.CANCELLED
    with pytest.raises(ConflictError, match="is cancelled; no more trials"):
        stale.suggest()
