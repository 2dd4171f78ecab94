"""``mipro-ray demo``: optimize a real local model on real data, no API key needed.

SmolLM2-135M-Instruct (served on loopback by `LocalModelServer`) classifies BBC News headlines
into five topics. The demo runs the light preset, then prints the unoptimized and optimized
accuracy on the held-out test split, the LLM calls and the time taken. ``--quick`` runs a
handful of examples and 2 trials (the CI smoke test).
"""

from __future__ import annotations

import logging
import time

from mipro_ray.bbc import BBC_SIGNATURE, prepare_bbc
from mipro_ray.cli import ProgressBar, summary_table
from mipro_ray.config import MiproSettings
from mipro_ray.dataset import DatasetSpec, load_examples
from mipro_ray.local_model import LocalModelServer, local_lm_config
from mipro_ray.metrics import MetricConfig
from mipro_ray.runner import run_spec
from mipro_ray.spec import DataSpec, PredictorSpec, ProgramSpec, RunSpec

logger = logging.getLogger(__name__)

INSTRUCTION = "Classify the topic of the news headline."
TEST_SIZE = 200


def demo_spec(*, base_url: str, quick: bool, run_dir: str | None) -> RunSpec:
    """The demo's `RunSpec` for a running local model endpoint."""
    folder = prepare_bbc()
    if quick:
        data = DataSpec(
            train=DatasetSpec(examples=load_examples(folder / "train.parquet")[:12]),
            val=DatasetSpec(examples=load_examples(folder / "val.parquet")[:8]),
            test=DatasetSpec(examples=load_examples(folder / "test.parquet")[:8]),
        )
        optimizer = MiproSettings(
            auto=None,
            num_candidates=2,
            num_trials=2,
            minibatch_size=4,
            max_bootstrapped_demos=2,
            max_labeled_demos=2,
            max_concurrent_trials=2,
        )
    else:
        data = DataSpec(
            train=DatasetSpec(uri=str(folder / "train.parquet")),
            val=DatasetSpec(uri=str(folder / "val.parquet")),
            test=DatasetSpec(examples=load_examples(folder / "test.parquet")[:TEST_SIZE]),
        )
        optimizer = MiproSettings(auto="light", max_concurrent_trials=2, minibatch_size=25)
    return RunSpec(
        program=ProgramSpec(
            predictors=[
                PredictorSpec(name="classify", signature=BBC_SIGNATURE, instruction=INSTRUCTION)
            ]
        ),
        data=data,
        metric=MetricConfig(name="exact_match"),
        student=local_lm_config(base_url),
        optimizer=optimizer,
        run_dir=run_dir if run_dir is not None else ("runs/demo-quick" if quick else "runs/demo"),
    )


def run_demo(*, quick: bool, run_dir: str | None) -> int:
    """Starts the local model, runs the demo and prints the summary; returns the exit code."""
    start = time.perf_counter()
    with LocalModelServer() as server:
        spec = demo_spec(base_url=server.base_url, quick=quick, run_dir=run_dir)
        print(f"SmolLM2-135M on BBC headlines; results in {spec.run_dir}", flush=True)
        bar = ProgressBar()
        try:
            outcome = run_spec(spec, on_event=bar)
        finally:
            bar.close()
    print(summary_table(outcome, wall_s=time.perf_counter() - start))
    return 0
