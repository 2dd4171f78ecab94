"""RunSpec: YAML configs with clear errors, program building, data loading and splits."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mipro_ray import ConfigError, DatasetError, save_parquet
from mipro_ray.spec import RunSpec


def _write(path: Path, config: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


BASE: dict[str, object] = {
    "program": {"predictors": [{"name": "qa", "signature": "question -> answer"}]},
    "data": {"train": {"examples": [{"question": f"q{i}", "answer": f"a{i}"} for i in range(10)]}},
    "student": {"model": "m", "base_url": "http://127.0.0.1:1/v1", "api_key_env": None},
}


def test_a_valid_config_builds_program_and_splits(tmp_path: Path) -> None:
    spec = RunSpec.from_yaml(_write(tmp_path / "c.yaml", BASE))
    program = spec.program.build()
    splits = spec.load_data(program)
    assert len(splits.train) + len(splits.val) == 10 and len(splits.val) == 5
    assert not {e["question"] for e in splits.train} & {e["question"] for e in splits.val}
    assert spec.optimizer.auto == "light"


def test_every_invalid_field_is_named_with_its_path(tmp_path: Path) -> None:
    bad = dict(BASE)
    bad["optimizer"] = {"num_candidates": 1, "minibatch_size": 0}
    bad["student"] = {"model": "m", "timeout_s": -1}
    with pytest.raises(ConfigError) as info:
        RunSpec.from_yaml(_write(tmp_path / "c.yaml", bad))
    message = str(info.value)
    for path in ("optimizer.num_candidates", "optimizer.minibatch_size", "student.timeout_s"):
        assert path in message


def test_a_malformed_signature_names_the_predictor(tmp_path: Path) -> None:
    bad = dict(BASE)
    bad["program"] = {"predictors": [{"name": "qa", "signature": "question answer"}]}
    spec = RunSpec.from_yaml(_write(tmp_path / "c.yaml", bad))
    with pytest.raises(ConfigError, match=r"predictors .qa..*->"):
        spec.program.build()


def test_yaml_syntax_and_missing_files_are_config_errors(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("program: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        RunSpec.from_yaml(broken)
    with pytest.raises(ConfigError, match="cannot read config file"):
        RunSpec.from_yaml(tmp_path / "missing.yaml")


def test_a_dataset_row_missing_a_field_is_reported_by_row(tmp_path: Path) -> None:
    rows = [{"question": "q0", "answer": "a0"}, {"question": "q1"}]
    save_parquet(rows, tmp_path / "train.parquet")  # type: ignore[arg-type]
    config = dict(BASE)
    config["data"] = {"train": {"uri": str(tmp_path / "train.parquet")}}
    spec = RunSpec.from_yaml(_write(tmp_path / "c.yaml", config))
    with pytest.raises(DatasetError, match="row 1") as info:
        spec.load_data(spec.program.build())
    assert info.value.field == "answer"


def test_custom_code_can_be_refused() -> None:
    spec = RunSpec.model_validate(
        {**BASE, "program": {"class_path": "os:path"}, "metric": {"name": "os.path:join"}}
    )
    with pytest.raises(ConfigError, match="disabled"):
        spec.program.build(allow_custom=False)
    with pytest.raises(ConfigError):
        spec.build_metric(allow_custom=False)
