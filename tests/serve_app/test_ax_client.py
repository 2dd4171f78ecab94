"""The real Ax client (``@ax-llm/ax`` AxMiPRO with optimizerEndpoint) against the Serve app.

Ax swallows per-trial errors, so this checks end to end that the trials the client reported
are exactly the trials the service stored, and that the best parameters are one of them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.npm]

AX_CLIENT_DIR = Path(__file__).parent / "ax_client"
NUM_TRIALS = 8


@pytest.fixture(scope="session")
def ax_client_dir() -> Path:
    """``tests/serve_app/ax_client`` with ``@ax-llm/ax`` installed from the lockfile."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        if os.environ.get("CI"):
            pytest.fail("node and npm are needed for the Ax client test")
        pytest.skip("node/npm not installed")
    if not (AX_CLIENT_DIR / "node_modules" / "@ax-llm" / "ax").is_dir():
        # --ignore-scripts: the package's install script writes files into the project.
        subprocess.run(
            ["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
            cwd=AX_CLIENT_DIR,
            check=True,
            timeout=300,
        )
    return AX_CLIENT_DIR


def _run_ax(ax_client_dir: Path, endpoint: str, *, optimize_top_p: bool) -> dict[str, Any]:
    completed = subprocess.run(
        ["node", "run_mipro.mjs", endpoint, str(NUM_TRIALS), "1" if optimize_top_p else "0"],
        cwd=ax_client_dir,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["error"] is None, report["error"]
    return report


@pytest.mark.parametrize("optimize_top_p", [False, True], ids=["default", "optimizeTopP"])
def test_ax_mipro_trials_are_exactly_the_study_trials(
    sqlite_app: str, client: httpx.Client, ax_client_dir: Path, optimize_top_p: bool
) -> None:
    report = _run_ax(ax_client_dir, sqlite_app, optimize_top_p=optimize_top_p)
    name = report["studyName"]
    assert name is not None
    parameter_names = {p["name"] for p in report["optimizeRequest"]["parameters"]}
    assert ("topP" in parameter_names) is optimize_top_p

    # Every protocol call the client made succeeded (only the final DELETE was held back).
    failed = [c for c in report["calls"] if c["status"] >= 400]
    assert failed == []
    assert report["heldBackDelete"] == f"/studies/{name}"

    results = client.get(f"{sqlite_app}/studies/{name}/results").json()
    stored = {t["number"]: t for t in results["trials"]}
    reported = report["trials"]
    assert len(reported) == NUM_TRIALS
    assert sorted(t["number"] for t in reported) == sorted(stored)
    for trial in reported:
        server = stored[trial["number"]]
        assert server["state"] == "COMPLETE"
        assert server["value"] == pytest.approx(trial["value"], abs=1e-12)
        assert server["params"]["temperature"] == pytest.approx(trial["temperature"])
        assert server["params"]["bootstrappedDemos"] == trial["bootstrappedDemos"]
        if optimize_top_p:
            assert server["params"]["topP"] == pytest.approx(trial["topP"])
        else:
            assert "topP" not in server["params"]

    best = results["best_params"]
    assert best in [t["params"] for t in results["trials"]]
    assert results["best_value"] == max(t["value"] for t in reported)
    final = report["finalConfiguration"]
    assert final["temperature"] == pytest.approx(best["temperature"])
    assert final["instruction"] == best["instruction"]

    job = client.get(f"{sqlite_app}/jobs").json()
    mine = next(j for j in job if j["study_name"] == name)
    assert mine["status"] == "completed"

    # The DELETE the client sent at the end works too.
    assert client.delete(f"{sqlite_app}/studies/{name}").status_code == 200
