"""Metrics: score one prediction against one labelled example.

A :data:`Metric` is any callable ``(example, prediction) -> float | bool``; higher is better.
The built-ins compare every field of the prediction for which the example has a label (a
non-``None`` value under the same name) and return the mean over those fields, so an
internal field such as ``reasoning`` that has no label is ignored, and a predicted field that
is ``None`` scores 0 for that field.

Metrics are named in configs by :func:`resolve_metric`: a built-in name (``exact_match``,
``f1``/``token_f1``, ``contains``, ``class_accuracy``, ``numeric``) or
``"package.module:function"`` for user code.
"""

from __future__ import annotations

import importlib
import logging
import math
import numbers
import re
import string
from collections import Counter
from collections.abc import Callable
from typing import TypeAlias

from pydantic import BaseModel, ConfigDict, JsonValue, model_validator
from pydantic import Field as PydanticField

from mipro_ray.errors import ConfigError, MetricError
from mipro_ray.signature import Example, Prediction

__all__ = [
    "BUILTIN_METRICS",
    "Metric",
    "MetricConfig",
    "class_accuracy",
    "contains",
    "exact_match",
    "metric_name",
    "normalize_text",
    "numeric",
    "numeric_within",
    "resolve_metric",
    "score",
    "token_f1",
]

logger = logging.getLogger(__name__)

Metric: TypeAlias = Callable[[Example, Prediction], float | bool]
"""Scores one prediction against one example; higher is better. ``bool`` counts as 0 or 1."""

DEFAULT_TOLERANCE = 1e-6

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)
_NUMBER = re.compile(r"[-+]?(?:\d[\d,]*(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")


def normalize_text(text: str) -> str:
    """Normalizes text as the SQuAD evaluation does.

    Lowercases, removes punctuation and the articles "a", "an" and "the", and collapses
    whitespace: ``"The  Answer."`` becomes ``"answer"``.
    """
    text = text.lower().translate(_PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _as_text(value: JsonValue) -> str:
    """Renders a value as plain text; lists and objects as their scalar leaves, space-joined."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, list):
        return " ".join(_as_text(v) for v in value)
    return " ".join(_as_text(v) for v in value.values())


def _normalized(value: JsonValue) -> JsonValue:
    """Normalizes every scalar of a value, keeping list and object structure."""
    if isinstance(value, list):
        return [_normalized(v) for v in value]
    if isinstance(value, dict):
        return {k: _normalized(v) for k, v in value.items()}
    return normalize_text(_as_text(value))


def _mean_over_labels(
    example: Example, prediction: Prediction, compare: Callable[[JsonValue, JsonValue], float]
) -> float:
    """Averages ``compare(predicted, label)`` over predicted fields that have a label."""
    scores = [
        0.0 if predicted is None else compare(predicted, example[name])
        for name, predicted in prediction.items()
        if example.get(name) is not None
    ]
    if scores:
        return sum(scores) / len(scores)
    if not prediction:
        return 0.0  # the program produced no fields at all
    raise MetricError(
        f"the example has no label for any predicted field ({', '.join(sorted(prediction))}); "
        f"its fields are ({', '.join(sorted(example))}): evaluate on labelled examples"
    )


def _exact(predicted: JsonValue, label: JsonValue) -> float:
    return float(_normalized(predicted) == _normalized(label))


def _f1(predicted: JsonValue, label: JsonValue) -> float:
    pred_tokens = normalize_text(_as_text(predicted)).split()
    gold_tokens = normalize_text(_as_text(label)).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision = common / len(pred_tokens)
    recall = common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _contains(predicted: JsonValue, label: JsonValue) -> float:
    needle = normalize_text(_as_text(label))
    haystack = normalize_text(_as_text(predicted))
    if not needle:
        return float(not haystack)
    # Pad with spaces so that "cat" matches whole words only, not "concatenate".
    return float(f" {needle} " in f" {haystack} ")


def _class_key(value: JsonValue) -> object:
    if isinstance(value, list):
        return sorted({str(_class_key(v)) for v in value})
    return _as_text(value).strip().casefold()


def _class_equal(predicted: JsonValue, label: JsonValue) -> float:
    return float(_class_key(predicted) == _class_key(label))


def exact_match(example: Example, prediction: Prediction) -> float:
    """Fraction of labelled fields whose prediction equals the label after normalization.

    Text is normalized with :func:`normalize_text`; lists and objects must match item by item
    (in order) after normalizing each item.
    """
    return _mean_over_labels(example, prediction, _exact)


def token_f1(example: Example, prediction: Prediction) -> float:
    """Mean SQuAD token F1 between prediction and label over the labelled fields."""
    return _mean_over_labels(example, prediction, _f1)


def contains(example: Example, prediction: Prediction) -> float:
    """Fraction of labelled fields whose normalized label appears, as whole words, in the
    normalized predicted text."""
    return _mean_over_labels(example, prediction, _contains)


def class_accuracy(example: Example, prediction: Prediction) -> float:
    """Fraction of labelled fields whose predicted class equals the label, ignoring case and
    surrounding whitespace; lists of classes are compared as sets."""
    return _mean_over_labels(example, prediction, _class_equal)


def _to_number(value: JsonValue) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if not isinstance(value, str):
        return None
    text = value.strip().replace(",", "")
    try:
        return float(text)
    except ValueError:
        pass
    # "The answer is 42." -> 42: take the last number in the text.
    found = _NUMBER.findall(value)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def numeric_within(tolerance: float) -> Metric:
    """Builds a metric that counts a field correct when the numbers are within ``tolerance``.

    Numbers may be given as JSON numbers or as text (thousands separators are ignored; from
    text such as ``"about 42 apples"`` the last number is taken). A prediction that holds no
    number scores 0.

    Args:
        tolerance: Allowed absolute difference, or difference relative to the larger magnitude,
            whichever is looser. Must be finite and >= 0.

    Raises:
        ConfigError: The tolerance is negative or not finite.
    """
    if not math.isfinite(tolerance) or tolerance < 0:
        raise ConfigError(f"numeric metric tolerance {tolerance} must be a finite number >= 0")

    def close(predicted: JsonValue, label: JsonValue) -> float:
        p, g = _to_number(predicted), _to_number(label)
        if p is None or g is None or not (math.isfinite(p) and math.isfinite(g)):
            return 0.0
        return float(math.isclose(p, g, rel_tol=tolerance, abs_tol=tolerance))

    def numeric_metric(example: Example, prediction: Prediction) -> float:
        return _mean_over_labels(example, prediction, close)

    numeric_metric.__name__ = numeric_metric.__qualname__ = "numeric"
    numeric_metric.__doc__ = f"Numeric equality within {tolerance} (absolute or relative)."
    return numeric_metric


numeric: Metric = numeric_within(DEFAULT_TOLERANCE)
"""Numeric equality within ``1e-6``; see :func:`numeric_within`."""

BUILTIN_METRICS: dict[str, Metric] = {
    "exact_match": exact_match,
    "f1": token_f1,
    "token_f1": token_f1,
    "contains": contains,
    "class_accuracy": class_accuracy,
    "numeric": numeric,
}
"""Built-in metrics by the names :func:`resolve_metric` accepts."""


def resolve_metric(spec: str | Metric, *, allow_custom: bool = True) -> Metric:
    """Turns a metric name, an import path or a callable into a metric.

    Args:
        spec: A built-in name (see :data:`BUILTIN_METRICS`), ``"package.module:function"``
            (the attribute may be dotted, ``"module:Class.method"``), or a callable, which is
            returned unchanged.
        allow_custom: Whether ``module:function`` specs may be imported. Importing runs user
            code, so a server taking specs from requests passes ``False``.

    Raises:
        ConfigError: Unknown name, custom code not allowed, module not importable, attribute
            missing or not callable.
    """
    if callable(spec):
        return spec
    if not isinstance(spec, str):
        raise ConfigError(f"metric {spec!r} is neither a metric name nor a callable")
    name = spec.strip()
    if name in BUILTIN_METRICS:
        return BUILTIN_METRICS[name]
    builtins = ", ".join(sorted(BUILTIN_METRICS))
    if ":" not in name:
        raise ConfigError(
            f"unknown metric {spec!r}: use a built-in ({builtins}) or a custom "
            "metric as 'package.module:function'"
        )
    if not allow_custom:
        raise ConfigError(
            f"custom metric {spec!r} is not allowed here (importing it would run "
            f"user code); use a built-in metric: {builtins}"
        )
    return _import_metric(spec, name)


def _import_metric(spec: str, name: str) -> Metric:
    module_name, _, attr_path = name.partition(":")
    if not module_name or not attr_path:
        raise ConfigError(f"metric {spec!r} is not of the form 'package.module:function'")
    try:
        target: object = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (
            module_name == exc.name or module_name.startswith(exc.name + ".")
        ):
            raise ConfigError(
                f"metric {spec!r}: module '{module_name}' not found; check the "
                "spelling and that it is installed or on PYTHONPATH"
            ) from exc
        raise ConfigError(
            f"metric {spec!r}: importing module '{module_name}' failed: {exc}; "
            "install the missing dependency"
        ) from exc
    except Exception as exc:  # user code at import time can raise anything
        raise ConfigError(
            f"metric {spec!r}: importing module '{module_name}' raised {type(exc).__name__}: {exc}"
        ) from exc
    for part in attr_path.split("."):
        if not hasattr(target, part):
            raise ConfigError(
                f"metric {spec!r}: '{module_name}' has no attribute "
                f"'{attr_path}'; check the function name after ':'"
            )
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(
            f"metric {spec!r}: '{attr_path}' is not callable (it is of type "
            f"{type(target).__name__}); point at a callable (example, prediction) -> float | bool"
        )
    logger.debug("imported custom metric %s", spec)
    return target


def metric_name(metric: Metric) -> str:
    """A short name of a metric for messages and records (its ``__name__`` when it has one)."""
    name = getattr(metric, "__name__", None)
    return name if isinstance(name, str) else type(metric).__name__


def score(metric: Metric, example: Example, prediction: Prediction) -> float:
    """Calls a metric and checks that it returned a usable score.

    Args:
        metric: The metric.
        example: The labelled example.
        prediction: The program's prediction for it.

    Returns:
        The score as a float; ``True``/``False`` become 1.0/0.0.

    Raises:
        MetricError: The metric raised (the original exception is chained), or returned
            something that is not a finite number or bool.
    """
    name = metric_name(metric)
    try:
        result: object = metric(example, prediction)
    except MetricError:
        raise
    except Exception as exc:
        raise MetricError(f"metric '{name}' raised {type(exc).__name__}: {exc}") from exc
    if isinstance(result, bool):
        return 1.0 if result else 0.0
    if not isinstance(result, numbers.Real):
        raise MetricError(
            f"metric '{name}' returned {type(result).__name__} {result!r:.80}; a "
            "metric must return a float or bool"
        )
    value = float(result)
    if not math.isfinite(value):
        raise MetricError(f"metric '{name}' returned {value}; a score must be a finite number")
    return value


class MetricConfig(BaseModel):
    """A metric as named in a config file or job spec.

    Attributes:
        name: A built-in metric name or ``"package.module:function"``.
        tolerance: Tolerance of the ``numeric`` metric (default 1e-6); only for ``numeric``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = PydanticField(min_length=1)
    tolerance: float | None = PydanticField(default=None, ge=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _tolerance_for_numeric(self) -> MetricConfig:
        if self.tolerance is not None and self.name != "numeric":
            raise ValueError(
                f"'tolerance' applies only to the 'numeric' metric, not {self.name!r}; remove it"
            )
        return self

    def build(self, *, allow_custom: bool = True) -> Metric:
        """Resolves the metric (see :func:`resolve_metric`).

        Raises:
            ConfigError: As :func:`resolve_metric`.
        """
        if self.name == "numeric" and self.tolerance is not None:
            return numeric_within(self.tolerance)
        return resolve_metric(self.name, allow_custom=allow_custom)
