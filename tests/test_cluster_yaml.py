"""``cluster.yaml`` is a valid Ray cluster-launcher config (``ray up`` cannot run here)."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from mipro_ray.jobs import find_secrets

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO / "cluster.yaml").read_text())
    return loaded


def test_it_validates_against_rays_cluster_schema(config: dict[str, Any]) -> None:
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)  # as written
    prepared = prepare_config(copy.deepcopy(config))  # as `ray up` sees it, provider defaults in
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"
    workers = prepared["available_node_types"]["ray.worker.cpu"]
    assert workers["min_workers"] == 0 and workers["max_workers"] >= 1  # autoscaling


def test_nodes_install_this_package_from_the_synced_checkout(config: dict[str, Any]) -> None:
    assert config["file_mounts"] == {"~/mipro-ray": "."}
    assert any('pip install -e "$HOME/mipro-ray' in c for c in config["setup_commands"])


def test_the_head_exposes_the_dashboard_and_metrics_and_deploys_the_serve_app(
    config: dict[str, Any], tmp_path: Path
) -> None:
    from ray.serve.schema import ServeDeploySchema

    start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=0.0.0.0" in start and "--metrics-export-port=" in start
    deploy = next(c for c in config["head_start_ray_commands"] if "serve deploy" in c)
    printf = deploy.split(" > ")[0]
    written = subprocess.run(["bash", "-c", printf], capture_output=True, text=True, check=True)
    serve_config = ServeDeploySchema.model_validate(yaml.safe_load(written.stdout))
    (app,) = serve_config.applications
    assert app.import_path == "serve_app:app"
    import serve_app

    assert "app" in serve_app.__all__


def test_it_holds_no_literal_secrets(config: dict[str, Any]) -> None:
    assert find_secrets(config) == []
