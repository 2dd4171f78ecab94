"""Presets and settings validation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from mipro_ray import MiproSettings


@pytest.mark.parametrize(
    ("auto", "predictors", "candidates", "trials", "val"),
    [
        ("light", 1, 6, 11, 100),
        ("light", 2, 6, 21, 100),
        ("medium", 1, 12, 18, 300),
        ("heavy", 2, 18, 34, 1000),
    ],
)
def test_presets_fix_candidates_trials_and_validation_size(
    auto: str, predictors: int, candidates: int, trials: int, val: int
) -> None:
    resolved = MiproSettings(auto=auto).resolve(num_predictors=predictors)  # type: ignore[arg-type]
    assert (resolved.num_candidates, resolved.num_trials, resolved.max_val_size) == (
        candidates,
        trials,
        val,
    )


def test_explicit_settings_override_the_preset() -> None:
    resolved = MiproSettings(auto="heavy", num_candidates=4, num_trials=7, max_val_size=50).resolve(
        num_predictors=1
    )
    assert (resolved.num_candidates, resolved.num_trials, resolved.max_val_size) == (4, 7, 50)


def test_no_preset_needs_explicit_numbers() -> None:
    with pytest.raises(ValidationError, match="num_candidates and num_trials"):
        MiproSettings(auto=None, num_candidates=4)


@pytest.mark.parametrize("bad", [(1.5, 1.0), (-0.1, 1.0), (0.5, 2.5)])
def test_temperature_range_is_checked(bad: tuple[float, float]) -> None:
    with pytest.raises(ValidationError, match="temperature_range"):
        MiproSettings(temperature_range=bad)


def test_unknown_settings_are_refused() -> None:
    with pytest.raises(ValidationError, match="num_trails"):
        MiproSettings.model_validate({"num_trails": 3})


def test_trial_actors_default_to_just_enough_to_fill_the_students_cap() -> None:
    assert MiproSettings().trial_actors(16) == 2  # minibatch 35: one trial fills 16, one more
    assert MiproSettings(minibatch_size=25).trial_actors(64) == 4
    assert MiproSettings(trial_concurrency=8).trial_actors(64) == 8  # 9, capped at 8
    assert MiproSettings(trial_concurrency=10).trial_actors(20) == 3
    assert MiproSettings(max_concurrent_trials=5).trial_actors(16) == 5
