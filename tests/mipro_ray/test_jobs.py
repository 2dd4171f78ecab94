"""Job specs' secret and custom-code checks, and reading a finished job from its run directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mipro_ray.jobs import (
    EVENTS_FILE,
    STATUS_FILE,
    JobEvent,
    JobStatus,
    custom_code_fields,
    find_secrets,
    read_events,
    read_status,
)
from mipro_ray.optimizer import Progress
from mipro_ray.spec import RunSpec


def _spec(**changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "program": {"predictors": [{"name": "qa", "signature": "question -> answer"}]},
        "data": {"train": {"examples": [{"question": "q", "answer": "a"}]}},
        "student": {"model": "gpt-4o-mini", "api_key_env": "OPENAI_API_KEY"},
    }
    spec.update(changes)
    return spec


def test_a_spec_naming_env_vars_has_no_secrets() -> None:
    assert find_secrets(_spec()) == []
    assert find_secrets(_spec(teacher={"model": "m", "base_url": "http://h:8000/v1"})) == []


@pytest.mark.parametrize(
    ("changes", "path"),
    [
        ({"student": {"model": "m", "api_key_env": "sk-abcdefghijklmnopqrstu"}}, "student"),
        ({"student": {"model": "m", "api_key_env": "my key"}}, "student.api_key_env"),
        ({"student": {"model": "m", "api_key": "anything"}}, "student.api_key"),
        ({"student": {"model": "m", "base_url": "https://u:p@h/v1"}}, "student.base_url"),
        ({"student": {"model": "m", "base_url": "https://h/v1?api_key=x"}}, "student.base_url"),
        ({"data": {"train": {"uri": "s3://b/k?token=abc"}}}, "data.train.uri"),
        ({"proposer": {"model": "Bearer abcdefghijklmnop"}}, "proposer.model"),
    ],
)
def test_literal_credentials_are_found_by_path_without_their_value(
    changes: dict[str, Any], path: str
) -> None:
    found = find_secrets(_spec(**changes))
    assert found and all(p.startswith(path) for p in found)
    assert not any("abcdefghijklmnop" in p for p in found)


def test_custom_code_fields_name_class_paths_and_module_metrics() -> None:
    assert custom_code_fields(RunSpec.model_validate(_spec())) == []
    custom = RunSpec.model_validate(
        _spec(program={"class_path": "pkg.mod:Prog"}, metric={"name": "pkg.mod:score"})
    )
    assert custom_code_fields(custom) == ["program.class_path", "metric.name"]


def test_a_finished_job_is_read_back_from_its_run_directory(tmp_path: Path) -> None:
    status = JobStatus(
        phase="finished", job_id="j1", run_dir=str(tmp_path), created_at=1.0, trials_done=3
    )
    events = [
        JobEvent(kind="phase", message=f"phase: {p}", progress=Progress(phase=p), seq=i, time=2.0)
        for i, p in enumerate(("bootstrapping", "proposing", "searching"))
    ]
    (tmp_path / STATUS_FILE).write_text(status.model_dump_json())
    (tmp_path / EVENTS_FILE).write_text("".join(e.model_dump_json() + "\n" for e in events))

    assert read_status(str(tmp_path)) == status
    assert [e.seq for e in read_events(str(tmp_path), after=1)] == [1, 2]
    assert read_status(str(tmp_path / "missing")) is None
    assert json.loads((tmp_path / STATUS_FILE).read_text())["phase"] == "finished"
