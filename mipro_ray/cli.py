"""The ``mipro-ray`` command line.

    mipro-ray optimize CONFIG.yaml [--run-dir DIR] [--ray-address ADDR]
    mipro-ray demo [--quick]        # SmolLM2 on BBC headlines, needs mipro-ray[local]

Exit codes: 0 success, 1 the run failed, 2 a configuration or input error (the message says
what to fix), 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from typing import TextIO

from tqdm import tqdm

from mipro_ray.errors import ConfigError, DatasetError, MiproError, SignatureError
from mipro_ray.optimizer import RunEvent
from mipro_ray.runner import SpecResult, run_spec
from mipro_ray.spec import RunSpec

logger = logging.getLogger("mipro_ray")


class ProgressBar:
    """A tqdm bar over search trials: best scores, LLM calls, tokens, elapsed and ETA."""

    def __init__(self, *, stream: TextIO | None = None) -> None:
        self._bar: tqdm | None = None
        self._stream = stream if stream is not None else sys.stderr

    def __call__(self, event: RunEvent) -> None:
        p = event.progress
        if event.kind == "phase":
            if self._bar is None and p.phase == "searching":
                self._bar = tqdm(
                    total=p.trials_planned, desc="searching", unit="trial", file=self._stream
                )
            elif p.phase in ("finished", "cancelled"):
                self.close()
            elif p.phase in ("bootstrapping", "proposing"):
                tqdm.write(f"[{p.elapsed_s:6.1f}s] {p.phase}...", file=self._stream)
            return
        if self._bar is None:
            return
        self._bar.n = min(p.trials_done, self._bar.total)
        best_full = "-" if p.best_full_score is None else f"{p.best_full_score:.3f}"
        best_mini = "-" if p.best_minibatch_score is None else f"{p.best_minibatch_score:.3f}"
        self._bar.set_postfix_str(
            f"best full {best_full} | best minibatch {best_mini} | calls {p.calls} | "
            f"tokens {p.tokens}"
        )
        if event.trial is not None and event.trial.state == "failed":
            tqdm.write(f"trial {event.trial.number} failed: {event.trial.error}", file=self._stream)

    def close(self) -> None:
        """Closes the bar (idempotent)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def summary_table(outcome: SpecResult, *, wall_s: float) -> str:
    """The final summary as an aligned text table."""
    r = outcome.result

    def fmt(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    rows = [
        ("", "baseline", "optimized"),
        ("validation score", fmt(r.baseline_score), fmt(r.best_score)),
    ]
    if outcome.n_test:
        rows.append(
            (
                f"test score ({outcome.n_test})",
                fmt(outcome.baseline_test_score),
                fmt(outcome.optimized_test_score),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) for row in rows]
    u = r.usage
    trials = r.trials
    failed = sum(1 for t in trials if t.state == "failed")
    lines += [
        "",
        f"trials: {sum(1 for t in trials if t.kind == 'minibatch')} minibatch, "
        f"{sum(1 for t in trials if t.kind != 'minibatch')} full, {failed} failed",
        f"stop reason: {r.stop_reason}",
        f"LLM calls: {u.calls} ({u.cache_hits} cached, {u.http_requests} HTTP requests, "
        f"{u.retries} retries); tokens: {u.prompt_tokens} prompt + {u.completion_tokens} "
        f"completion; cost: ${u.cost_usd:.4f}",
        f"time: {wall_s:.1f}s; results: {r.run_dir}",
    ]
    if r.proposer_failures:
        lines.append(f"proposer failures: {len(r.proposer_failures)} (see candidates.json)")
    return "\n".join(lines)


def _optimize(args: argparse.Namespace) -> int:
    spec = RunSpec.from_yaml(args.config)
    if args.run_dir is not None:
        spec = spec.model_copy(update={"run_dir": args.run_dir})
    bar = ProgressBar()
    start = time.perf_counter()
    try:
        outcome = run_spec(spec, on_event=bar, ray_address=args.ray_address)
    finally:
        bar.close()
    print(summary_table(outcome, wall_s=time.perf_counter() - start))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``mipro-ray``."""
    parser = argparse.ArgumentParser(prog="mipro-ray", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    opt = sub.add_parser("optimize", help="optimize a program described by a YAML config")
    opt.add_argument("config", help="path of the YAML RunSpec")
    opt.add_argument("--run-dir", default=None, help="override the config's run_dir")
    opt.add_argument("--ray-address", default=None, help="Ray cluster (default: RAY_ADDRESS)")
    opt.set_defaults(func=_optimize)
    demo = sub.add_parser("demo", help="optimize SmolLM2-135M on BBC headlines (local model)")
    demo.add_argument("--quick", action="store_true", help="a few examples and 2 trials")
    demo.add_argument("--run-dir", default=None, help="where results go")
    demo.set_defaults(func=_demo)
    return parser


def _demo(args: argparse.Namespace) -> int:
    from mipro_ray.demo import run_demo  # the [local] extra is only needed here

    return run_demo(quick=args.quick, run_dir=args.run_dir)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mipro-ray`` script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("httpx", "httpx2", "openai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        code: int = args.func(args)
        return code
    except (ConfigError, DatasetError, SignatureError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except MiproError as exc:
        print(f"run failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
