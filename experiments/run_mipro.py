"""Run one MIPRO optimization from a YAML config; the entrypoint for ``ray job submit``.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python experiments/run_mipro.py --config experiments/configs/headlines-openai.yaml

Inside a Ray job it joins the job's cluster; run locally it starts (or joins, with
``RAY_ADDRESS``) a cluster. Results go to the config's ``run_dir``; rerunning resumes.
"""

from __future__ import annotations

import argparse
import sys

from mipro_ray.cli import main


def _parse(argv: list[str]) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--config", required=True, help="path of the YAML RunSpec")
    parser.add_argument("--run-dir", default=None, help="override the config's run_dir")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    forwarded = ["-v"] if args.verbose else []
    forwarded += ["optimize", args.config]
    if args.run_dir is not None:
        forwarded += ["--run-dir", args.run_dir]
    return forwarded


if __name__ == "__main__":
    sys.exit(main(_parse(sys.argv[1:])))
