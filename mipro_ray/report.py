"""The end-of-run report: plots (PNG) and a short Markdown summary in the run directory.

| file | content |
|---|---|
| ``optimization_history.png`` | minibatch and full-validation scores by trial, best-so-far line |
| ``parameter_importance.png`` | share of the minibatch score variance each parameter explains |
| ``report.md`` | scores, stop reason, usage, best configuration, the plots |

Parameter importance is the correlation ratio η² of a one-way analysis of variance: for each
search variable, the between-group variance of minibatch scores grouped by its value (a
temperature is cut into quartiles) over their total variance. It needs no extra package and
reads as "how much of the score differences this choice alone explains"; with few trials it is
noisy, and the report says when there are too few to compute it.
"""

from __future__ import annotations

import io
import logging
import statistics
from collections.abc import Sequence
from typing import TYPE_CHECKING

from matplotlib.figure import Figure

from mipro_ray.rundir import RunDir
from mipro_ray.search import TrialRecord

if TYPE_CHECKING:
    from mipro_ray.optimizer import MiproResult

logger = logging.getLogger(__name__)

HISTORY_PNG = "optimization_history.png"
IMPORTANCE_PNG = "parameter_importance.png"
REPORT_MD = "report.md"

_MIN_TRIALS_FOR_IMPORTANCE = 4


def parameter_importance(trials: Sequence[TrialRecord]) -> dict[str, float]:
    """η² of each search parameter over the complete minibatch trials, largest first.

    Returns an empty dict with fewer than four scored minibatch trials or no score variance.
    """
    scored = [t for t in trials if t.kind == "minibatch" and t.score is not None]
    if len(scored) < _MIN_TRIALS_FOR_IMPORTANCE:
        return {}
    scores = [float(t.score) for t in scored if t.score is not None]
    mean = statistics.fmean(scores)
    total = sum((s - mean) ** 2 for s in scores)
    if total == 0:
        return {}
    names = sorted({k for t in scored for k in t.params})
    importance: dict[str, float] = {}
    for name in names:
        groups: dict[object, list[float]] = {}
        values = [t.params.get(name) for t in scored]
        keys = _quartiles(values) if name.endswith("__temperature") else values
        for key, score in zip(keys, scores, strict=True):
            groups.setdefault(key, []).append(score)
        between = sum(len(g) * (statistics.fmean(g) - mean) ** 2 for g in groups.values())
        importance[name] = between / total
    return dict(sorted(importance.items(), key=lambda kv: -kv[1]))


def _quartiles(values: list[int | float | None]) -> list[object]:
    present = sorted(float(v) for v in values if v is not None)
    if len(present) < 4:
        return list(values)
    cuts = statistics.quantiles(present, n=4)
    return [None if v is None else sum(float(v) > c for c in cuts) for v in values]


def plot_history(trials: Sequence[TrialRecord], baseline_score: float | None) -> bytes:
    """PNG of scores by trial number: minibatch dots, full evaluations, best full score so far."""
    fig = Figure(figsize=(8, 4.5), dpi=100)  # no pyplot: no global backend, no display
    ax = fig.subplots()
    ordered = sorted(trials, key=lambda t: t.number)
    mini = [t for t in ordered if t.kind == "minibatch" and t.score is not None]
    full = [t for t in ordered if t.kind in ("full", "baseline") and t.score is not None]
    failed = [t for t in ordered if t.state == "failed"]
    ax.scatter(
        [t.number for t in mini], [_score(t) for t in mini], s=18, alpha=0.6, label="minibatch"
    )
    ax.scatter(
        [t.number for t in full],
        [_score(t) for t in full],
        s=60,
        marker="D",
        label="full validation",
    )
    if failed:
        ax.scatter([t.number for t in failed], [0.0] * len(failed), marker="x", label="failed")
    best: list[float] = []
    for t in full:
        assert t.score is not None
        best.append(max(best[-1], t.score) if best else t.score)
    if full:
        ax.step([t.number for t in full], best, where="post", label="best full so far")
    if baseline_score is not None:
        ax.axhline(baseline_score, linestyle="--", linewidth=1, label="baseline")
    ax.set_xlabel("trial")
    ax.set_ylabel("score")
    ax.set_title("Optimization history")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def plot_importance(importance: dict[str, float]) -> bytes:
    """PNG bar chart of `parameter_importance` (a note when it is empty)."""
    fig = Figure(figsize=(8, max(2.5, 0.5 * len(importance) + 1.5)), dpi=100)
    ax = fig.subplots()
    if importance:
        names = list(importance)[::-1]
        ax.barh(names, [importance[n] for n in names])
        ax.set_xlim(0, 1)
        ax.set_xlabel("share of minibatch score variance explained (η²)")
    else:
        ax.text(0.5, 0.5, "too few scored trials", ha="center", va="center")
        ax.set_axis_off()
    ax.set_title("Parameter importance")
    fig.tight_layout()
    return _png(fig)


def _score(trial: TrialRecord) -> float:
    return float(trial.score) if trial.score is not None else float("nan")


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def markdown_report(result: MiproResult, importance: dict[str, float]) -> str:
    """The Markdown summary of a run."""

    def fmt(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    trials = result.trials
    kinds = [t.kind for t in trials]
    u = result.usage
    lines = [
        "# MIPRO run report",
        "",
        "| | score |",
        "|---|---|",
        f"| baseline (full validation) | {fmt(result.baseline_score)} |",
        f"| optimized (full validation) | {fmt(result.best_score)} |",
        "",
        f"- stop reason: {result.stop_reason}",
        f"- trials: {kinds.count('minibatch')} minibatch, {kinds.count('full')} full, "
        f"{sum(1 for t in trials if t.state == 'failed')} failed",
        f"- LLM calls: {u.calls} ({u.cache_hits} cached, {u.http_requests} HTTP requests); "
        f"tokens: {u.prompt_tokens} prompt + {u.completion_tokens} completion; "
        f"cost: ${u.cost_usd:.4f}",
        f"- wall time: {result.wall_s:.1f} s",
        "",
        "## Best configuration",
        "",
    ]
    lines += [f"- `{k}`: {v}" for k, v in sorted(result.best_params.items())]
    for name, predictor in result.program.named_predictors().items():
        lines += ["", f"### `{name}`", "", "Instruction:", "", f"> {predictor.instruction}"]
        lines.append(f"\n{len(predictor.demos)} demos.")
    lines += ["", "## Plots", "", f"![history]({HISTORY_PNG})", ""]
    if importance:
        lines += [f"![importance]({IMPORTANCE_PNG})", "", "| parameter | η² |", "|---|---|"]
        lines += [f"| `{k}` | {v:.2f} |" for k, v in importance.items()]
    else:
        lines.append(
            f"Parameter importance needs at least {_MIN_TRIALS_FOR_IMPORTANCE} scored minibatch "
            "trials with different scores."
        )
    return "\n".join(lines) + "\n"


def write_report(run_dir: RunDir, result: MiproResult) -> list[str]:
    """Writes the plots and ``report.md`` to the run directory; returns the file names.

    Raises:
        StorageError: a file cannot be written.
    """
    importance = parameter_importance(result.trials)
    run_dir.write_bytes(HISTORY_PNG, plot_history(result.trials, result.baseline_score))
    run_dir.write_bytes(IMPORTANCE_PNG, plot_importance(importance))
    run_dir.write_bytes(REPORT_MD, markdown_report(result, importance).encode())
    logger.info("report written to %s/%s", run_dir.location, REPORT_MD)
    return [HISTORY_PNG, IMPORTANCE_PNG, REPORT_MD]
