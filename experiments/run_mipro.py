"""Run one MIPRO optimization from a YAML config; the entrypoint for ``ray job submit``.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python experiments/run_mipro.py --config experiments/configs/headlines-openai.yaml

Inside a Ray job it joins the job's cluster; run locally it starts (or joins, with
``RAY_ADDRESS``) a cluster. Results go to the config's ``run_dir``; rerunning resumes. Under
``ray job submit`` give an absolute ``run_dir`` that the head node keeps (or an ``s3://`` URI
with a ``storage_url``): a relative one lands in the job's temporary working dir.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile

from mipro_ray.cli import main

logger = logging.getLogger("mipro_ray.experiments")

_RAY_WORKING_DIR = "runtime_resources/working_dir_files"


def _stable_working_dir() -> None:
    """Runs from a private copy of a Ray job's ``--working-dir``.

    Ray unpacks the working dir under the session directory, and a node's runtime-env agent may
    replace that directory (delete and unpack again) while the job runs, e.g. when several
    nodes share one machine; Tune needs a current directory that exists until the end.
    """
    cwd = os.getcwd()
    if _RAY_WORKING_DIR not in cwd:
        return
    copy = tempfile.mkdtemp(prefix="mipro-job-")
    shutil.copytree(cwd, copy, dirs_exist_ok=True)
    os.chdir(copy)
    logger.info("running from %s, a private copy of the job's working dir", copy)


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
    forwarded = _parse(sys.argv[1:])
    _stable_working_dir()
    sys.exit(main(forwarded))
