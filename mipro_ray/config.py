"""Optimizer settings, presets and budgets: the single source of truth for MIPRO's knobs.

Presets (``auto``) fix the number of instruction/demo candidates and the validation size;
the number of trials follows MIPROv2's rule ``max(2 * V * log2(N), 1.5 * N)`` with
``V = 2 * predictors`` searched variables and ``N`` candidates:

| preset | candidates N | validation examples | trials (1 predictor) | trials (2 predictors) |
|--------|--------------|---------------------|----------------------|-----------------------|
| light  | 6            | 100                 | 11                   | 21                    |
| medium | 12           | 300                 | 18                   | 29                    |
| heavy  | 18           | 1000                | 27                   | 34                    |

Any explicit setting (``num_candidates``, ``num_trials``, ``max_val_size``) overrides the preset.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Preset = Literal["light", "medium", "heavy"]


class PresetSettings(BaseModel):
    """What a preset fixes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    num_candidates: int
    val_size: int


LIGHT = PresetSettings(num_candidates=6, val_size=100)
MEDIUM = PresetSettings(num_candidates=12, val_size=300)
HEAVY = PresetSettings(num_candidates=18, val_size=1000)


def preset_settings(preset: Preset) -> PresetSettings:
    """Returns the settings a preset implies."""
    if preset == "light":
        return LIGHT
    if preset == "medium":
        return MEDIUM
    return HEAVY


def trials_for(num_predictors: int, num_candidates: int) -> int:
    """MIPROv2's default number of search trials for a program and candidate count."""
    variables = 2 * num_predictors
    return max(
        math.ceil(2 * variables * math.log2(num_candidates)), math.ceil(1.5 * num_candidates)
    )


class Budget(BaseModel):
    """Stop the search when any limit is reached (counted over the whole run)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_calls: int | None = Field(
        default=None, ge=1, description="LLM requests (cache hits excluded)"
    )
    max_tokens: int | None = Field(default=None, ge=1, description="prompt + completion tokens")
    max_cost_usd: float | None = Field(default=None, gt=0, description="needs prices in LMConfig")
    patience: int | None = Field(
        default=None, ge=1, description="stop after this many trials without a better score"
    )


class MiproSettings(BaseModel):
    """Settings of one MIPRO run. Unset numbers come from the ``auto`` preset.

    Attributes:
        auto: Preset for the unset numbers; ``None`` requires num_candidates and num_trials.
        num_candidates: Instruction candidates and demo sets per predictor.
        num_trials: Minibatch search trials (full evaluations come on top).
        max_bootstrapped_demos: Most bootstrapped demos in one demo set.
        max_labeled_demos: Most labeled demos in one demo set.
        minibatch_size: Validation examples scored per trial.
        full_eval_steps: Full-validation evaluation of the best config every this many trials.
        max_val_size: Validation examples used (a seeded sample when the set is larger).
        max_concurrent_trials: Trial actors running at once (default: enough to fill the
            student's ``max_concurrency``, see `trial_actors`).
        trial_concurrency: Examples in flight within one trial (default: minibatch size).
        temperature_range: Also search each predictor's temperature in this range.
        proposal_temperature: Sampling temperature of instruction proposals.
        metric_threshold: A bootstrapped trace is kept when its score reaches this.
        max_error_fraction: A trial fails when more of its examples fail (LM/metric errors).
        seed: Seed of every random choice (demo sets, tips, minibatches, TPE).
        budget: Stopping rules.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    auto: Preset | None = "light"
    num_candidates: int | None = Field(default=None, ge=2, le=100)
    num_trials: int | None = Field(default=None, ge=1, le=10_000)
    max_bootstrapped_demos: int = Field(default=4, ge=0, le=64)
    max_labeled_demos: int = Field(default=4, ge=0, le=64)
    minibatch_size: int = Field(default=35, ge=1)
    full_eval_steps: int = Field(default=5, ge=1)
    max_val_size: int | None = Field(default=None, ge=1)
    max_concurrent_trials: int | None = Field(default=None, ge=1, le=256)
    trial_concurrency: int | None = Field(default=None, ge=1)
    temperature_range: tuple[float, float] | None = None
    proposal_temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    metric_threshold: float | None = None
    max_error_fraction: float = Field(default=0.5, ge=0.0, le=1.0)
    seed: int = 0
    budget: Budget = Field(default_factory=Budget)

    @model_validator(mode="after")
    def _check(self) -> MiproSettings:
        if self.auto is None and (self.num_candidates is None or self.num_trials is None):
            raise ValueError(
                "with auto=None, set both num_candidates and num_trials (or pick a preset: "
                "auto='light' | 'medium' | 'heavy')"
            )
        if self.temperature_range is not None:
            low, high = self.temperature_range
            if not 0.0 <= low < high <= 2.0:
                raise ValueError("temperature_range must satisfy 0 <= low < high <= 2")
        return self

    def trial_actors(self, student_max_concurrency: int) -> int:
        """`max_concurrent_trials`, or by default enough trials to keep the student's cap full
        while one of them drains its last examples: ``ceil(cap / per-trial concurrency) + 1``,
        at most 8 (each trial actor is a process that takes seconds to start)."""
        if self.max_concurrent_trials is not None:
            return self.max_concurrent_trials
        per_trial = self.trial_concurrency or self.minibatch_size
        return min(8, -(-student_max_concurrency // per_trial) + 1)

    def resolve(self, *, num_predictors: int) -> ResolvedSettings:
        """Fixes every number for a program with ``num_predictors`` predictors."""
        preset = preset_settings(self.auto) if self.auto is not None else None
        candidates = (
            self.num_candidates
            if self.num_candidates is not None
            else (preset.num_candidates if preset is not None else 6)
        )
        trials = (
            self.num_trials
            if self.num_trials is not None
            else trials_for(num_predictors, candidates)
        )
        val_size = (
            self.max_val_size
            if self.max_val_size is not None
            else (preset.val_size if preset is not None else None)
        )
        return ResolvedSettings(
            num_candidates=candidates,
            num_trials=trials,
            max_val_size=val_size,
            settings=self,
        )


class ResolvedSettings(BaseModel):
    """`MiproSettings` with every preset-dependent number fixed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    num_candidates: int
    num_trials: int
    max_val_size: int | None
    settings: MiproSettings

    def num_full_evals(self) -> int:
        """Full evaluations the search plans (periodic + final), baseline excluded."""
        return self.num_trials // self.settings.full_eval_steps + 1
