"""mipro-ray: MIPROv2 prompt optimization for LLM programs, on Ray Tune and Ray Serve.

The public names below are imported lazily (PEP 562): ``import mipro_ray`` stays cheap, so Ray
workers that only need a small module (the LM limiter, a trial) do not import the whole
package, Ray Tune and Optuna included.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# `evaluate` is both a submodule and a function: bind the function now, or importing the
# submodule anywhere would leave `mipro_ray.evaluate` pointing at the module.
from mipro_ray.evaluate import evaluate

if TYPE_CHECKING:
    from mipro_ray.config import (
        Budget,
        MiproSettings,
    )
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
    from mipro_ray.evaluate import (
        EvaluationResult,
        ExampleRecord,
    )
    from mipro_ray.lm import (
        LM,
        LMConfig,
        LMRequest,
        LMResponse,
        Usage,
    )
    from mipro_ray.metrics import (
        Metric,
        MetricConfig,
        resolve_metric,
    )
    from mipro_ray.optimizer import (
        MIPRO,
        MiproResult,
        Progress,
        RunEvent,
    )
    from mipro_ray.program import (
        ModelSettings,
        Pipeline,
        Predict,
        Program,
        ProgramState,
        load_program,
    )
    from mipro_ray.signature import (
        Example,
        Field,
        FieldType,
        Prediction,
        Signature,
    )

_EXPORTS: dict[str, str] = {
    "Budget": "mipro_ray.config",
    "BudgetExceeded": "mipro_ray.errors",
    "ConfigError": "mipro_ray.errors",
    "DatasetError": "mipro_ray.errors",
    "DatasetSpec": "mipro_ray.dataset",
    "EvaluationError": "mipro_ray.errors",
    "EvaluationResult": "mipro_ray.evaluate",
    "Example": "mipro_ray.signature",
    "ExampleRecord": "mipro_ray.evaluate",
    "Field": "mipro_ray.signature",
    "FieldType": "mipro_ray.signature",
    "LM": "mipro_ray.lm",
    "LMConfig": "mipro_ray.lm",
    "LMError": "mipro_ray.errors",
    "LMRateLimitError": "mipro_ray.errors",
    "LMRequest": "mipro_ray.lm",
    "LMRequestError": "mipro_ray.errors",
    "LMResponse": "mipro_ray.lm",
    "LMServerError": "mipro_ray.errors",
    "LMTimeoutError": "mipro_ray.errors",
    "MIPRO": "mipro_ray.optimizer",
    "Metric": "mipro_ray.metrics",
    "MetricConfig": "mipro_ray.metrics",
    "MetricError": "mipro_ray.errors",
    "MiproError": "mipro_ray.errors",
    "MiproResult": "mipro_ray.optimizer",
    "MiproSettings": "mipro_ray.config",
    "ModelSettings": "mipro_ray.program",
    "ParseError": "mipro_ray.errors",
    "Pipeline": "mipro_ray.program",
    "Predict": "mipro_ray.program",
    "Prediction": "mipro_ray.signature",
    "Program": "mipro_ray.program",
    "ProgramError": "mipro_ray.errors",
    "ProgramState": "mipro_ray.program",
    "Progress": "mipro_ray.optimizer",
    "RunEvent": "mipro_ray.optimizer",
    "Signature": "mipro_ray.signature",
    "SignatureError": "mipro_ray.errors",
    "StorageError": "mipro_ray.errors",
    "Usage": "mipro_ray.lm",
    "examples_from_rows": "mipro_ray.dataset",
    "load_examples": "mipro_ray.dataset",
    "load_program": "mipro_ray.program",
    "resolve_metric": "mipro_ray.metrics",
    "save_parquet": "mipro_ray.dataset",
    "split_examples": "mipro_ray.dataset",
    "validate_examples": "mipro_ray.dataset",
}

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


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mipro_ray' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
