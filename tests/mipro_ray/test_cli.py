"""The mipro-ray command line: exit codes and messages a user sees."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mipro_ray.cli import main
from mipro_ray.testing import FakeLLMServer, LandscapeTask


def test_a_missing_config_exits_2_with_the_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["optimize", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err


def test_an_invalid_config_exits_2_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"program": {"predictors": []}, "student": {"model": "m"}}))
    assert main(["optimize", str(config)]) == 2
    err = capsys.readouterr().err
    assert "program" in err and "data" in err and "Traceback" not in err


@pytest.mark.ray
@pytest.mark.slow
def test_optimize_runs_a_config_end_to_end_and_prints_a_summary(
    ray_address: str, tmp_path: Path
) -> None:
    task = LandscapeTask()
    with FakeLLMServer(responder=task) as server:
        config = {
            "program": {
                "predictors": [
                    {"name": "label", "signature": task.signature, "instruction": "Label it."}
                ]
            },
            "data": {
                "train": {"examples": task.examples(0, 20)},
                "val": {"examples": task.examples(100, 20)},
                "test": {"examples": task.examples(200, 30)},
            },
            "student": {"model": "fake", "base_url": server.base_url, "api_key_env": None},
            "optimizer": {"num_candidates": 3, "num_trials": 3, "minibatch_size": 10},
            "run_dir": str(tmp_path / "run"),
        }
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(config))
        done = subprocess.run(
            [sys.executable, "experiments/run_mipro.py", "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=300,
            env={"RAY_ADDRESS": ray_address, **_env()},
            cwd=Path(__file__).resolve().parents[2],
        )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "validation score" in done.stdout and "test score (30)" in done.stdout
    assert "stop reason: completed 3 trials" in done.stdout
    assert "searching" in done.stderr  # the progress bar
    assert (tmp_path / "run" / "best_program.json").exists()


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
