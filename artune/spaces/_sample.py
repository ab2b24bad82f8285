"""The Optuna adapter: a space's define-by-run function, its sampler, its grid, each knob's distribution.

Ray's ``OptunaSearch(space=...)`` is handed ``SearchSpace.define_by_run``, and a knob keeps its TrainConfig
name as its Optuna parameter name. Optuna is imported only when a sampler or a distribution is built.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

    from artune.spaces._distribution import Distribution
    from artune.spaces._space import SearchSpace


def define_by_run(space: SearchSpace, trial: Any) -> dict[str, Any]:
    """Sample every knob on an Optuna trial; return the constants for Ray to merge into the config.

    A conditional knob is suggested only when its ``when`` holds against the values sampled so
    far (or fixed, or TrainConfig's default); otherwise it is left out and keeps its default.
    """
    sampled: dict[str, Any] = {}
    for name, dist in space.params.items():
        if dist.when and not space.holds(dist.when, sampled):
            continue
        if dist.kind == "loguniform":
            sampled[name] = trial.suggest_float(name, dist.low, dist.high, log=True)
        elif dist.kind == "uniform":
            sampled[name] = trial.suggest_float(name, dist.low, dist.high, step=dist.step)
        elif dist.kind == "int":
            sampled[name] = trial.suggest_int(name, int(dist.low), int(dist.high), step=int(dist.step), log=dist.log)
        else:
            # Choices are coerced to the knob's type at load, so they are plain None/bool/int/float/str,
            # which Optuna's CategoricalDistribution and its storages accept.
            sampled[name] = trial.suggest_categorical(name, list(dist.values))
    return {**space.fixed, "epochs": space.settings.epochs}


def optuna_distribution(dist: Distribution) -> optuna.distributions.BaseDistribution:
    """The Optuna distribution ``define_by_run`` samples a knob from."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if dist.kind == "loguniform":
        return FloatDistribution(dist.low, dist.high, log=True)
    if dist.kind == "uniform":
        return FloatDistribution(dist.low, dist.high, step=dist.step)
    if dist.kind == "int":
        return IntDistribution(int(dist.low), int(dist.high), step=int(dist.step), log=dist.log)
    return CategoricalDistribution(list(dist.values))


def grid(space: SearchSpace) -> dict[str, list]:
    """The grid sampler's grid: every value of every searched knob."""
    return {name: dist.grid_values() for name, dist in space.params.items()}


def sampler_seed(space: SearchSpace, run: int = 1) -> int | None:
    """The seed of the ``run``-th run's sampler (see :func:`make_sampler`)."""
    s = space.settings
    # An extension's k-th run draws anew (seed + k - 1), but for the grid: its k-th trial runs the k-th
    # point of the grid as the seed shuffles it, so the same shuffle makes the warm-started trials (numbered
    # first) the points already run and an extension's trials the points after them.
    return None if s.seed is None else (s.seed + (0 if s.sampler == "grid" else run - 1)) % 2**32


def make_sampler(space: SearchSpace, run: int = 1) -> optuna.samplers.BaseSampler:
    """The Optuna sampler the settings name, seeded with ``settings.seed`` for a search's first run and
    ``seed + run - 1`` for the ``run``-th (``--extend``): a sampler that draws without looking at the
    history (random, QMC, TPE's first trials) would otherwise repeat the first run's draws."""
    import optuna

    s = space.settings
    seed = sampler_seed(space, run)
    with warnings.catch_warnings():
        # group=True and QMCSampler are marked experimental; that is not news to a user of a sweep.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if s.sampler == "tpe":
            # Multivariate TPE models the knobs jointly; group splits the joint model where
            # conditional knobs make trials' search spaces differ. constant_liar makes the concurrent
            # asks of a Ray sweep see running trials as bad, so they spread out instead of repeating.
            return optuna.samplers.TPESampler(
                seed=seed,
                multivariate=True,
                group=any(d.when for d in space.params.values()),
                constant_liar=True,
                n_startup_trials=max(2, min(10, s.num_samples // 4)),
            )
        if s.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if s.sampler == "grid":
            return optuna.samplers.GridSampler(grid(space), seed=seed)
        if s.sampler == "qmc":
            # Scrambling is what makes the seed matter. Choices are drawn at random, not by QMC.
            return optuna.samplers.QMCSampler(seed=seed, scramble=True, warn_independent_sampling=False)
        # CMA-ES optimises the numeric knobs; choices fall back to random sampling.
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
