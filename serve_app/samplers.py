"""Protocol sampler/pruner names -> Optuna samplers and pruners, and the search space."""

from __future__ import annotations

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from serve_app.models import ParameterSpec, ParameterType, PrunerName, SamplerName


def make_sampler(name: SamplerName, *, seed: int | None) -> optuna.samplers.BaseSampler:
    """Builds the sampler named by the protocol.

    Args:
        name: ``TPESampler``, ``RandomSampler`` or ``CmaEsSampler``.
        seed: Seed of the sampler's random generator, or None for a random one.
    """
    if name == "TPESampler":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "RandomSampler":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "CmaEsSampler":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    raise AssertionError(f"unreachable: sampler {name!r} passed validation")


def make_pruner(name: PrunerName | None) -> optuna.pruners.BasePruner:
    """Builds the pruner named by the protocol; None means never prune."""
    if name is None:
        return optuna.pruners.NopPruner()
    if name == "MedianPruner":
        return optuna.pruners.MedianPruner()
    if name == "SuccessiveHalvingPruner":
        return optuna.pruners.SuccessiveHalvingPruner()
    if name == "HyperbandPruner":
        return optuna.pruners.HyperbandPruner()
    raise AssertionError(f"unreachable: pruner {name!r} passed validation")


def distribution(spec: ParameterSpec) -> BaseDistribution:
    """The Optuna distribution of one validated parameter spec."""
    if spec.type is ParameterType.CATEGORICAL:
        assert spec.choices is not None
        return CategoricalDistribution(spec.choices)
    assert spec.low is not None and spec.high is not None
    if spec.type is ParameterType.INT:
        step = int(spec.step) if spec.step is not None else 1
        return IntDistribution(int(spec.low), int(spec.high), log=spec.log, step=step)
    return FloatDistribution(spec.low, spec.high, log=spec.log, step=spec.step)


def search_space(specs: list[ParameterSpec]) -> dict[str, BaseDistribution]:
    """The Optuna search space of a parameter list, in the request's order."""
    return {spec.name: distribution(spec) for spec in specs}
