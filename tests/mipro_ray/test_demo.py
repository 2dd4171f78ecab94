"""The README's main job on the real local model: the CLI path, a handful of examples."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.local_model, pytest.mark.ray, pytest.mark.slow]


@pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None and not os.environ.get("CI"),
    reason="needs the [local] extra: pip install -e '.[local]'",
)
def test_demo_quick_runs_end_to_end_on_smollm2(ray_address: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_ADDRESS"] = ray_address
    done = subprocess.run(
        [sys.executable, "-m", "mipro_ray.cli", "demo", "--quick", "--run-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    out = done.stdout
    assert "SmolLM2-135M on BBC headlines" in out
    assert "validation score" in out and "test score (8)" in out
    assert "stop reason: completed 2 trials" in out
    calls = int(out.split("LLM calls: ")[1].split(" ")[0])
    assert calls > 10, "the real model must have been called"
    assert (tmp_path / "best_program.json").exists()
