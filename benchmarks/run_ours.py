"""mipro-ray's MIPRO on the synthetic workload against the simulated LLM.

Runs in the library venv and starts Ray, so hold the shared lock::

    flock /tmp/mipro-ray-ray.lock .venv/bin/python -m benchmarks.run_ours --scenario 200ms-cap16

Measurement: marks on the simulated LLM, wall time of ``MIPRO.compile`` including Ray
start-up (``mipro_ray`` itself is imported before the clock starts, as DSPy is in
`benchmarks.run_dspy`), CPU and peak RSS of the driver and every Ray process it started,
held-out and oracle scores. The run's phase and trial events go to stderr with their times.
The calls into the library are confined to `_optimize` and `_holdout_score`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import sys
import time
from collections.abc import Sequence

from benchmarks import task
from benchmarks.proctree import ProcessTreeSampler
from benchmarks.settings import (
    ClientUsage,
    Scenario,
    Workload,
    add_run_args,
    build_record,
    emit_record,
    run_settings_from_args,
)
from benchmarks.simproc import SimControl, SimEndpoint, SimProcess

__all__ = ["build_program", "run_ours"]

SIGNATURE = 'item:string -> label:class "' + ", ".join(task.LABELS) + '"'
"""The task's signature in Ax syntax (same fields as DSPy's ``ClassifyItem``)."""


def build_program() -> object:
    """The unoptimized one-step program: `SIGNATURE` with `task.BASE_INSTRUCTION`, no demos."""
    from mipro_ray import Pipeline, Predict

    return Pipeline([("classify", Predict(SIGNATURE, instruction=task.BASE_INSTRUCTION))])


def _student(scenario: Scenario, endpoint: SimEndpoint) -> object:
    from mipro_ray import LMConfig

    return LMConfig(
        model="sim",
        base_url=endpoint.base_url,
        api_key_env=None,
        cache=False,
        max_concurrency=scenario.cap,
    )


def _optimize(
    scenario: Scenario,
    workload: Workload,
    endpoint: SimEndpoint,
    splits: task.Splits,
    ray_address: str | None,
) -> object:
    """Runs ``MIPRO(...).compile`` (Ray start-up included); returns its ``MiproResult``.

    ``max_concurrent_trials`` is left to its default, ``ceil(cap / minibatch) + 1`` (at most 8).
    """
    from mipro_ray.config import MiproSettings
    from mipro_ray.optimizer import MIPRO, RunEvent

    settings = MiproSettings(
        auto=None,
        num_candidates=workload.num_candidates,
        num_trials=workload.num_trials,
        minibatch_size=workload.minibatch_size,
        full_eval_steps=workload.full_eval_steps,
        max_bootstrapped_demos=workload.max_bootstrapped_demos,
        max_labeled_demos=workload.max_labeled_demos,
        seed=workload.seed,
    )
    student = _student(scenario, endpoint)
    started = time.perf_counter()

    def log_event(event: RunEvent) -> None:
        # The timeline of the run on stderr: where the time goes.
        print(f"[{time.perf_counter() - started:7.2f}s] {event.message}", file=sys.stderr)

    mipro = MIPRO(
        student=student,  # type: ignore[arg-type]
        metric="exact_match",
        settings=settings,
        on_event=log_event,
        ray_address=ray_address,
    )
    program = build_program()
    return mipro.compile(program, trainset=splits.train, valset=splits.val)  # type: ignore[arg-type]


def _holdout_score(
    program: object, scenario: Scenario, endpoint: SimEndpoint, test: list[dict[str, str]]
) -> float:
    """Scores the optimized program on the test split (no Ray needed)."""
    from mipro_ray import LM, resolve_metric
    from mipro_ray.evaluate import evaluate

    lm = LM(_student(scenario, endpoint))  # type: ignore[arg-type]
    result = asyncio.run(
        evaluate(
            program,  # type: ignore[arg-type]
            test,  # type: ignore[arg-type]
            metric=resolve_metric("exact_match"),
            lm=lm,
            concurrency=scenario.cap,
        )
    )
    return float(result.score)


def _chosen_configuration(program: object) -> tuple[str, list[task.Demo]]:
    """Instruction and (item, label) demos of the program's single predictor."""
    predictors = program.named_predictors()  # type: ignore[attr-defined]
    (predictor,) = predictors.values()
    demos = [(str(d["item"]), str(d["label"])) for d in predictor.demos]
    return str(predictor.instruction), demos


def run_ours(
    scenario: Scenario,
    workload: Workload | None = None,
    endpoint: SimEndpoint | None = None,
    *,
    exclude_pids: frozenset[int] = frozenset(),
    ray_temp_dir: str | None = None,
) -> dict[str, object]:
    """Optimizes the task program with mipro-ray and returns the run record.

    Without ``endpoint`` it starts its own simulated LLM process (kept out of the CPU and
    memory figures). The wall time runs from just before ``MIPRO`` is built (Ray not yet
    started) to the return of ``compile``. With ``ray_temp_dir`` the run joins the running
    cluster started with that ``--temp-dir`` (as ``ray job submit`` runs do), and that
    cluster's processes count in the CPU and memory figures.
    """
    workload = workload if workload is not None else Workload()
    if endpoint is None:
        with SimProcess(latency_s=scenario.latency_s, cap=scenario.cap, seed=workload.seed) as sim:
            assert sim.endpoint is not None and sim.pid is not None
            return run_ours(
                scenario,
                workload,
                sim.endpoint,
                exclude_pids=frozenset({sim.pid}),
                ray_temp_dir=ray_temp_dir,
            )
    splits = task.make_splits(
        seed=workload.seed, n_train=workload.n_train, n_val=workload.n_val, n_test=workload.n_test
    )
    control = SimControl(endpoint)
    importlib.import_module("mipro_ray.optimizer")  # before the clock, like DSPy's import
    address = "auto" if ray_temp_dir is not None else None
    with ProcessTreeSampler(exclude_pids=exclude_pids, include_cmdline=ray_temp_dir) as tree:
        control.mark("optimize_start")
        started = time.perf_counter()
        result = _optimize(scenario, workload, endpoint, splits, address)
        wall = time.perf_counter() - started
        control.mark("optimize_end")
    program = result.program  # type: ignore[attr-defined]
    holdout = _holdout_score(program, scenario, endpoint, splits.test)
    control.mark("holdout_end")
    instruction, demos = _chosen_configuration(program)
    best = result.best_score  # type: ignore[attr-defined]
    return build_record(
        system="mipro_ray" if ray_temp_dir is None else "mipro_ray_warm",
        scenario=scenario,
        workload=workload,
        wall_s=wall,
        optimize_stats=control.stats("optimize_start", "optimize_end"),
        holdout_score=round(holdout, 4),
        oracle_score=task.oracle_accuracy(instruction, demos),
        baseline_oracle=task.oracle_accuracy(task.BASE_INSTRUCTION, []),
        usage=ClientUsage(cpu_s=tree.cpu_s, peak_rss_mb=tree.peak_rss_mb),
        extra={
            "best_val_score": None if best is None else round(float(best), 4),
            "holdout_calls": control.stats("optimize_end", "holdout_end")["calls"],
            "chosen_instruction": instruction,
            "chosen_demos": len(demos),
            "stop_reason": getattr(result, "stop_reason", None),
        },
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: run one scenario and print its JSON record."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run_ours", description=__doc__)
    add_run_args(parser)
    parser.add_argument(
        "--ray-temp-dir", help="join the running cluster started with this --temp-dir"
    )
    args = parser.parse_args(argv)
    scenario, workload = run_settings_from_args(args)
    endpoint = None
    if args.base_url is not None:
        endpoint = SimEndpoint(base_url=args.base_url, control_url=args.control_url)
    with contextlib.redirect_stdout(sys.stderr):
        record = run_ours(scenario, workload, endpoint, ray_temp_dir=args.ray_temp_dir)
    emit_record(record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
