"""mipro-ray: MIPROv2 prompt optimization for LLM programs, on Ray Tune and Ray Serve."""

from __future__ import annotations

from mipro_ray.config import Budget, MiproSettings
from mipro_ray.dataset import (
    DatasetSpec,
    examples_from_rows,
    load_examples,
    save_parquet,
    split_examples,
    validate_examples,
)
from mipro_ray.errors import (
    BudgetExceeded,
    ConfigError,
    DatasetError,
    EvaluationError,
    LMError,
    LMRateLimitError,
    LMRequestError,
    LMServerError,
    LMTimeoutError,
    MetricError,
    MiproError,
    ParseError,
    ProgramError,
    SignatureError,
    StorageError,
)
from mipro_ray.evaluate import EvaluationResult, ExampleRecord, evaluate
from mipro_ray.lm import LM, LMConfig, LMRequest, LMResponse, Usage
from mipro_ray.metrics import Metric, MetricConfig, resolve_metric
from mipro_ray.optimizer import MIPRO, MiproResult, Progress, RunEvent
from mipro_ray.program import (
    ModelSettings,
    Pipeline,
    Predict,
    Program,
    ProgramState,
    load_program,
)
from mipro_ray.signature import Example, Field, FieldType, Prediction, Signature

__all__ = [
    "LM",
    "MIPRO",
    "Budget",
    "BudgetExceeded",
    "ConfigError",
    "DatasetError",
    "DatasetSpec",
    "EvaluationError",
    "EvaluationResult",
    "Example",
    "ExampleRecord",
    "Field",
    "FieldType",
    "LMConfig",
    "LMError",
    "LMRateLimitError",
    "LMRequest",
    "LMRequestError",
    "LMResponse",
    "LMServerError",
    "LMTimeoutError",
    "Metric",
    "MetricConfig",
    "MetricError",
    "MiproError",
    "MiproResult",
    "MiproSettings",
    "ModelSettings",
    "ParseError",
    "Pipeline",
    "Predict",
    "Prediction",
    "Program",
    "ProgramError",
    "ProgramState",
    "Progress",
    "RunEvent",
    "Signature",
    "SignatureError",
    "StorageError",
    "Usage",
    "evaluate",
    "examples_from_rows",
    "load_examples",
    "load_program",
    "resolve_metric",
    "save_parquet",
    "split_examples",
    "validate_examples",
]
