"""`RunSpec`: one optimization job as data (a YAML config file or an HTTP job body).

The same pydantic model drives ``mipro-ray optimize CONFIG.yaml``,
``experiments/run_mipro.py`` (for ``ray job submit``) and ``POST /mipro/jobs`` of the Serve app.

Example YAML::

    program:
      predictors:
        - name: classify
          signature: 'headline:string -> topic:class "business, sport, tech"'
          instruction: Classify the headline.
    data:
      train: {uri: data/train.parquet}
      val: {uri: data/val.parquet}
    metric: {name: exact_match}
    student: {model: gpt-4o-mini, api_key_env: OPENAI_API_KEY}
    optimizer: {auto: light}
    run_dir: runs/headlines
"""

from __future__ import annotations

import importlib
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mipro_ray.config import MiproSettings
from mipro_ray.dataset import DatasetSpec, split_examples, validate_examples
from mipro_ray.errors import ConfigError, MiproError
from mipro_ray.lm import LMConfig
from mipro_ray.metrics import Metric, MetricConfig
from mipro_ray.program import Pipeline, Predict, Program
from mipro_ray.signature import Example


class PredictorSpec(BaseModel):
    """One step of a pipeline program."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    signature: str = Field(min_length=3, description="Ax signature, e.g. 'question -> answer'")
    instruction: str | None = None


class ProgramSpec(BaseModel):
    """The program to optimize: a pipeline of predictors, or a `Program` subclass by path."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    predictors: list[PredictorSpec] | None = None
    class_path: str | None = Field(
        default=None, description="'package.module:ClassName' of a Program subclass"
    )

    @model_validator(mode="after")
    def _one_kind(self) -> ProgramSpec:
        if (self.predictors is None) == (self.class_path is None):
            raise ValueError("give exactly one of 'predictors' (a pipeline) and 'class_path'")
        if self.predictors is not None:
            if not self.predictors:
                raise ValueError("'predictors' needs at least one predictor")
            names = [p.name for p in self.predictors]
            if len(set(names)) != len(names):
                raise ValueError(f"predictor names must be unique, got {names}")
        return self

    def build(self, *, allow_custom: bool = True) -> Program:
        """Builds the program.

        Raises:
            ConfigError: a signature is malformed or the class cannot be used.
        """
        if self.predictors is not None:
            steps = []
            for p in self.predictors:
                try:
                    steps.append((p.name, Predict(p.signature, instruction=p.instruction)))
                except MiproError as exc:
                    raise ConfigError(f"program.predictors '{p.name}': {exc}") from exc
            try:
                return Pipeline(steps)
            except MiproError as exc:
                raise ConfigError(f"program: {exc}") from exc
        assert self.class_path is not None
        if not allow_custom:
            raise ConfigError(
                "custom program classes are disabled on this server (they run user code); "
                "describe the program with 'predictors' instead"
            )
        module_name, _, qualname = self.class_path.partition(":")
        try:
            obj: object = importlib.import_module(module_name)
            for part in qualname.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ConfigError(f"cannot import program class '{self.class_path}': {exc}") from exc
        if not (isinstance(obj, type) and issubclass(obj, Program)):
            raise ConfigError(f"'{self.class_path}' is not a mipro_ray.Program subclass")
        return obj()


class DataSpec(BaseModel):
    """Train/validation/test data; missing splits are cut from ``train`` with ``split_seed``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    train: DatasetSpec
    val: DatasetSpec | None = None
    test: DatasetSpec | None = None
    val_fraction: float = Field(default=0.5, gt=0, lt=1)
    split_seed: int = 0


class Splits(BaseModel):
    """Loaded, validated examples."""

    model_config = ConfigDict(frozen=True)

    train: list[Example]
    val: list[Example]
    test: list[Example]


class RunSpec(BaseModel):
    """Everything one MIPRO run needs. API keys are named environment variables, never values."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    program: ProgramSpec
    data: DataSpec
    metric: MetricConfig = Field(default_factory=lambda: MetricConfig(name="exact_match"))
    student: LMConfig
    teacher: LMConfig | None = None
    proposer: LMConfig | None = None
    optimizer: MiproSettings = Field(default_factory=MiproSettings)
    run_dir: str | None = None
    storage_url: str | None = None

    @classmethod
    def from_yaml(cls, path: str | Path) -> RunSpec:
        """Reads a YAML config file.

        Raises:
            ConfigError: the file is missing, not YAML, or invalid (names each bad field).
        """
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file '{path}': {exc}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file '{path}' is not valid YAML: {exc}") from exc
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            detail = describe_validation_error(exc)
            raise ConfigError(f"invalid config '{path}':\n{detail}") from exc

    def build_metric(self, *, allow_custom: bool = True) -> Metric:
        """The metric (custom ``module:function`` only when allowed)."""
        return self.metric.build(allow_custom=allow_custom)

    def load_data(self, program: Program) -> Splits:
        """Loads and validates the data against the program's signature.

        Raises:
            DatasetError: a source is unreadable or a row lacks a required field.
        """
        signature = program.program_signature()
        train = validate_examples(self.data.train.load(), signature)
        if self.data.val is not None:
            val = validate_examples(self.data.val.load(), signature)
        else:
            n_val = max(1, round(len(train) * self.data.val_fraction))
            val, train = split_examples(
                train, sizes=[n_val, len(train) - n_val], seed=self.data.split_seed
            )
        test = validate_examples(self.data.test.load(), signature) if self.data.test else []
        return Splits(train=train, val=val, test=test)


def describe_validation_error(exc: ValidationError) -> str:
    """One line per problem: the dotted path of the field and what is wrong with it."""
    lines = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "(top level)"
        lines.append(f"  - {where}: {error['msg']}")
    return "\n".join(lines)
