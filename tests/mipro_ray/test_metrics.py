"""Tests of mipro_ray.metrics: built-in metrics, resolving specs, and checked scoring."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from mipro_ray.errors import ConfigError, MetricError
from mipro_ray.metrics import (
    MetricConfig,
    class_accuracy,
    contains,
    exact_match,
    normalize_text,
    numeric,
    numeric_within,
    resolve_metric,
    score,
    token_f1,
)
from mipro_ray.signature import Example, Prediction


def always_half(example: Example, prediction: Prediction) -> float:
    """A custom metric resolved by import path in the tests below."""
    return 0.5


NOT_CALLABLE = 42


def test_normalize_text_follows_squad() -> None:
    assert normalize_text("  The  Answer, an   apple.  ") == "answer apple"


def test_exact_match() -> None:
    assert exact_match({"answer": "answer"}, {"answer": "The Answer."}) == 1.0
    assert exact_match({"answer": "answer"}, {"answer": "an answer key"}) == 0.0
    assert exact_match({"n": 3.0}, {"n": "3"}) == 1.0
    assert exact_match({"tags": ["A", "b"]}, {"tags": ["a.", "B"]}) == 1.0
    assert exact_match({"tags": ["a", "b"]}, {"tags": ["b", "a"]}) == 0.0


def test_mean_over_labelled_fields_ignores_unlabelled_and_zeroes_missing() -> None:
    example: Example = {"question": "q", "a": "x", "b": "y"}
    assert exact_match(example, {"a": "x", "b": "z", "reasoning": "hmm"}) == 0.5
    assert exact_match(example, {"a": "x", "b": None}) == 0.5
    assert exact_match(example, {}) == 0.0


def test_no_label_for_any_predicted_field_is_an_error() -> None:
    with pytest.raises(MetricError, match="no label for any predicted field"):
        exact_match({"question": "q"}, {"answer": "a"})


def test_token_f1_gives_partial_credit() -> None:
    # tokens: pred [cat, sat] vs gold [cat, sat, down]: P=1, R=2/3, F1=0.8
    assert token_f1({"a": "cat sat down"}, {"a": "The cat sat."}) == pytest.approx(0.8)
    assert token_f1({"a": "dog"}, {"a": "cat"}) == 0.0
    assert token_f1({"a": "Paris"}, {"a": "paris"}) == 1.0


def test_contains_matches_whole_words() -> None:
    assert contains({"a": "Paris"}, {"a": "It is paris, France."}) == 1.0
    assert contains({"a": "cat"}, {"a": "concatenate"}) == 0.0


def test_class_accuracy_ignores_case() -> None:
    assert class_accuracy({"label": "Positive"}, {"label": " positive"}) == 1.0
    assert class_accuracy({"label": "positive"}, {"label": "negative"}) == 0.0
    assert class_accuracy({"labels": ["a", "B"]}, {"labels": ["b", "A"]}) == 1.0


def test_numeric_tolerance() -> None:
    assert numeric({"n": 42}, {"n": "The answer is 42."}) == 1.0
    assert numeric({"n": 1_000}, {"n": "1,000"}) == 1.0
    assert numeric({"n": 1.0}, {"n": 1.01}) == 0.0
    assert numeric({"n": 1.0}, {"n": "no number"}) == 0.0
    loose = numeric_within(0.05)
    assert loose({"n": 1.0}, {"n": 1.01}) == 1.0
    assert loose({"n": 100.0}, {"n": 104.0}) == 1.0  # relative: 4 <= 0.05 * 104
    assert loose({"n": 100.0}, {"n": 110.0}) == 0.0
    with pytest.raises(ConfigError, match="tolerance"):
        numeric_within(-1)


def test_resolve_builtins_and_callables() -> None:
    assert resolve_metric("exact_match") is exact_match
    assert resolve_metric("f1") is token_f1
    assert resolve_metric("token_f1") is token_f1
    assert resolve_metric(always_half) is always_half


def test_resolve_module_function_from_test_module() -> None:
    metric = resolve_metric(f"{__name__}:always_half")
    assert score(metric, {"a": "x"}, {"a": "y"}) == 0.5


@pytest.fixture
def tmp_module(tmp_path: Path) -> Iterator[str]:
    (tmp_path / "my_tmp_metrics.py").write_text(
        "def length_ok(example, prediction):\n    return len(prediction['a']) < 5\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        yield "my_tmp_metrics"
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("my_tmp_metrics", None)


def test_resolve_module_function_on_sys_path(tmp_module: str) -> None:
    metric = resolve_metric(f"{tmp_module}:length_ok")
    assert score(metric, {"a": "x"}, {"a": "abc"}) == 1.0
    assert score(metric, {"a": "x"}, {"a": "abcdefg"}) == 0.0


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("exact", r"unknown metric 'exact'.*exact_match.*'package\.module:function'"),
        ("no_such_module_xyz:f", r"module 'no_such_module_xyz' not found.*PYTHONPATH"),
        (f"{__name__}:missing", r"has no attribute 'missing'"),
        (f"{__name__}:NOT_CALLABLE", r"'NOT_CALLABLE' is not callable \(it is of type int\)"),
        (":f", r"not of the form 'package\.module:function'"),
    ],
)
def test_bad_specs_are_config_errors(spec: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        resolve_metric(spec)


def test_custom_metrics_can_be_refused() -> None:
    with pytest.raises(ConfigError, match="not allowed"):
        resolve_metric(f"{__name__}:always_half", allow_custom=False)
    assert resolve_metric("contains", allow_custom=False) is contains
    with pytest.raises(ConfigError, match="not allowed"):
        MetricConfig(name=f"{__name__}:always_half").build(allow_custom=False)


def test_score_converts_bools_and_wraps_failures() -> None:
    assert score(lambda e, p: True, {}, {}) == 1.0
    assert score(lambda e, p: False, {}, {}) == 0.0

    def broken(example: Example, prediction: Prediction) -> float:
        raise ValueError("label is malformed")

    with pytest.raises(
        MetricError, match="metric 'broken' raised ValueError: label is malformed"
    ) as info:
        score(broken, {}, {})
    assert isinstance(info.value.__cause__, ValueError)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "0.5", None])
def test_score_rejects_non_scores(bad: object) -> None:
    with pytest.raises(MetricError, match="metric '<lambda>' returned"):
        score(lambda e, p: bad, {}, {})  # type: ignore[arg-type, return-value]


def test_metric_config() -> None:
    assert MetricConfig(name="f1").build() is token_f1
    loose = MetricConfig(name="numeric", tolerance=0.5).build()
    assert loose({"n": 1}, {"n": 1.4}) == 1.0
    with pytest.raises(ValidationError, match="only to the 'numeric' metric"):
        MetricConfig(name="f1", tolerance=0.1)
    with pytest.raises(ValidationError):
        MetricConfig(name="numeric", tolerance=-1.0)
    with pytest.raises(ValidationError):
        MetricConfig(name="f1", extra=1)  # type: ignore[call-arg]
