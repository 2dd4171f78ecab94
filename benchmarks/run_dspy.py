"""DSPy 3.x ``MIPROv2`` on the synthetic workload against the simulated LLM.

Runs in the benchmark venv (DSPy and its dependencies never enter the library's venv)::

    .venv-bench/bin/python -m benchmarks.run_dspy --scenario 200ms-cap16

Without ``--base-url`` it starts its own simulated LLM process (under the library's
interpreter, see `benchmarks.simproc`). Settings mirror ours: ``auto=None``, the workload's
candidates, trials, minibatch size and full-eval cadence, 4/4 demos, ``num_threads`` = the
cap, a fixed seed, and no DSPy or LiteLLM cache, so every call reaches the server. Prints one
JSON line (see `benchmarks.settings.build_record`); everything else goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, Literal

# LiteLLM fetches a model price map from the internet at import unless told otherwise.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import dspy

from benchmarks import task
from benchmarks.settings import (
    Scenario,
    Workload,
    add_run_args,
    build_record,
    client_usage,
    emit_record,
    run_settings_from_args,
)
from benchmarks.simproc import SimControl, SimEndpoint, SimProcess

__all__ = ["ItemClassifier", "exact_match", "run_dspy"]


class ClassifyItem(dspy.Signature):  # type: ignore[misc]
    """Placeholder: the instruction is set to task.BASE_INSTRUCTION below."""

    item: str = dspy.InputField()
    label: Literal["amber", "birch", "cobalt", "dune"] = dspy.OutputField()


class ItemClassifier(dspy.Module):  # type: ignore[misc]
    """The program under optimization: one ``Predict`` from item to label."""

    def __init__(self) -> None:
        super().__init__()
        self.classify = dspy.Predict(ClassifyItem.with_instructions(task.BASE_INSTRUCTION))

    def forward(self, item: str) -> Any:
        """Classifies one item."""
        return self.classify(item=item)


def exact_match(example: Any, prediction: Any, trace: Any = None) -> bool:
    """The metric: the predicted label equals the gold label (case and spaces ignored)."""
    predicted = str(getattr(prediction, "label", "")).strip().lower()
    return bool(predicted == example.label)


def _examples(rows: Sequence[dict[str, str]]) -> list[Any]:
    return [dspy.Example(**row).with_inputs("item") for row in rows]


def _chosen_configuration(program: Any) -> tuple[str, list[task.Demo]]:
    """Instruction and (item, label) demos of the program's single predictor."""
    (predictor,) = program.predictors()
    demos = [(str(d["item"]), str(d["label"])) for d in predictor.demos]
    return str(predictor.signature.instructions), demos


def run_dspy(scenario: Scenario, workload: Workload, endpoint: SimEndpoint) -> dict[str, object]:
    """Optimizes `ItemClassifier` with MIPROv2, evaluates it on the test split, returns the record.

    The wall time covers ``MIPROv2(...).compile`` only (after imports and data set-up);
    the held-out evaluation runs afterwards and its calls are reported separately.
    """
    if tuple(ClassifyItem.output_fields["label"].annotation.__args__) != task.LABELS:
        raise RuntimeError("ClassifyItem's label options drifted from task.LABELS")
    splits = task.make_splits(
        seed=workload.seed, n_train=workload.n_train, n_val=workload.n_val, n_test=workload.n_test
    )
    trainset, valset, testset = (_examples(s) for s in (splits.train, splits.val, splits.test))
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
    lm = dspy.LM("openai/sim", api_base=endpoint.base_url, api_key="x", cache=False)
    dspy.configure(lm=lm)
    control = SimControl(endpoint)

    before = client_usage()
    control.mark("optimize_start")
    started = time.perf_counter()
    optimizer = dspy.MIPROv2(
        metric=exact_match,
        auto=None,
        num_candidates=workload.num_candidates,
        num_threads=scenario.cap,
        max_bootstrapped_demos=workload.max_bootstrapped_demos,
        max_labeled_demos=workload.max_labeled_demos,
        seed=workload.seed,
    )
    best = optimizer.compile(
        ItemClassifier(),
        trainset=trainset,
        valset=valset,
        num_trials=workload.num_trials,
        minibatch=True,
        minibatch_size=workload.minibatch_size,
        minibatch_full_eval_steps=workload.full_eval_steps,
    )
    wall = time.perf_counter() - started
    control.mark("optimize_end")
    after = client_usage()

    evaluate = dspy.Evaluate(
        devset=testset, metric=exact_match, num_threads=scenario.cap, display_progress=False
    )
    holdout = float(evaluate(best).score) / 100.0  # DSPy reports a percentage
    control.mark("holdout_end")

    instruction, demos = _chosen_configuration(best)
    holdout_stats = control.stats("optimize_end", "holdout_end")
    best_val = getattr(best, "score", None)
    return build_record(
        system="dspy",
        scenario=scenario,
        workload=workload,
        wall_s=wall,
        optimize_stats=control.stats("optimize_start", "optimize_end"),
        holdout_score=round(holdout, 4),
        oracle_score=task.oracle_accuracy(instruction, demos),
        baseline_oracle=task.oracle_accuracy(task.BASE_INSTRUCTION, []),
        usage=type(after)(cpu_s=after.cpu_s - before.cpu_s, peak_rss_mb=after.peak_rss_mb),
        extra={
            "version": dspy.__version__,
            "best_val_score": None if best_val is None else round(float(best_val) / 100.0, 4),
            "holdout_calls": holdout_stats["calls"],
            "chosen_instruction": instruction,
            "chosen_demos": len(demos),
        },
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: run one scenario and print its JSON record."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run_dspy", description=__doc__)
    add_run_args(parser)
    args = parser.parse_args(argv)
    scenario, workload = run_settings_from_args(args)
    # DSPy prints progress with print(); keep stdout for the one JSON line.
    with contextlib.redirect_stdout(sys.stderr):
        if args.base_url is not None:
            endpoint = SimEndpoint(base_url=args.base_url, control_url=args.control_url)
            record = run_dspy(scenario, workload, endpoint)
        else:
            with SimProcess(
                latency_s=scenario.latency_s, cap=scenario.cap, seed=workload.seed
            ) as sim:
                assert sim.endpoint is not None
                record = run_dspy(scenario, workload, sim.endpoint)
    emit_record(record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
