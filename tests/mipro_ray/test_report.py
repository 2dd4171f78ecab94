"""The end-of-run report: plots a user can open and a Markdown summary with the numbers."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import pytest

from mipro_ray import Pipeline, Usage
from mipro_ray.optimizer import CallProjection, MiproResult
from mipro_ray.report import parameter_importance, write_report
from mipro_ray.rundir import RunDir
from mipro_ray.search import TrialRecord


def _trials() -> list[TrialRecord]:
    """The score depends on the instruction only; the demo set is noise-free irrelevant."""
    trials = [
        TrialRecord(number=0, kind="baseline", params={"p__instruction": 0, "p__demos": 0},
                    score=0.3, state="complete"),
    ]  # fmt: skip
    for n in range(1, 13):
        instruction, demos = n % 3, (n // 3) % 2
        trials.append(
            TrialRecord(
                number=n,
                kind="minibatch",
                params={"p__instruction": instruction, "p__demos": demos},
                score=[0.3, 0.8, 0.5][instruction],
                state="complete",
            )
        )
    trials.append(
        TrialRecord(number=13, kind="minibatch", params={"p__instruction": 1, "p__demos": 1},
                    score=None, state="failed", error="too many LM errors")
    )  # fmt: skip
    trials.append(
        TrialRecord(number=14, kind="full", params={"p__instruction": 1, "p__demos": 0},
                    score=0.78, state="complete")
    )  # fmt: skip
    return trials


def test_importance_finds_the_parameter_that_drives_the_score() -> None:
    importance = parameter_importance(_trials())
    assert list(importance) == ["p__instruction", "p__demos"]
    assert importance["p__instruction"] == pytest.approx(1.0)
    assert importance["p__demos"] < 0.05


def test_importance_needs_a_few_scored_trials() -> None:
    assert parameter_importance(_trials()[:3]) == {}


def test_write_report_writes_pngs_and_a_markdown_summary(tmp_path: Path) -> None:
    program = Pipeline.from_signatures("question -> answer", instructions=["Answer well."])
    result = MiproResult(
        program=program,
        best_score=0.78,
        baseline_score=0.3,
        best_params={"p__instruction": 1, "p__demos": 0},
        trials=_trials(),
        usage=Usage(calls=120, prompt_tokens=5000, completion_tokens=800, cost_usd=0.0123),
        usage_by_phase={},
        stop_reason="completed 13 trials",
        run_dir=str(tmp_path),
        projection=CallProjection(bootstrap=1, propose=1, search=1),
        wall_s=12.5,
    )
    files = write_report(RunDir(tmp_path), result)

    assert files == ["optimization_history.png", "parameter_importance.png", "report.md"]
    for png in files[:2]:
        image = matplotlib.image.imread(tmp_path / png)
        assert image.shape[0] > 200 and image.shape[1] > 500
    report = (tmp_path / "report.md").read_text()
    assert "| baseline (full validation) | 0.300 |" in report
    assert "| optimized (full validation) | 0.780 |" in report
    assert "stop reason: completed 13 trials" in report
    assert "13 minibatch, 1 full, 1 failed" in report
    assert "> Answer well." in report and "![history](optimization_history.png)" in report
    assert "| `p__instruction` | 1.00 |" in report
