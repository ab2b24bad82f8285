"""More trials for the fixture search's Optuna study (tests/_results_fixture.py), enough for importances."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution

from tests import _results_fixture as fx

DISTRIBUTIONS = {
    "d_model": CategoricalDistribution([32, 64, 128]),
    "lr": FloatDistribution(1e-4, 3e-2, log=True),
    "optimizer": CategoricalDistribution(["adam", "adamw"]),
    "dataloader_shuffle_with_replacement": CategoricalDistribution([False, True]),
}


def add_trials(
    directory: Path, n: int, state: optuna.trial.TrialState = optuna.trial.TrialState.COMPLETE, flat: bool = False
) -> None:
    """``n`` more trials in the search's study: lr decides the value (lower is better), the other knobs do not;
    ``flat``: every value the same."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=fx.NAME, storage=f"sqlite:///{directory / 'optuna.db'}")
    trials = []
    for i in range(n):
        lr = 1e-4 * 300 ** (((i * 7) % n) / n)  # spread over the range, in a scrambled order
        params = {
            "d_model": (32, 64, 128)[i % 3],
            "lr": lr,
            "optimizer": ("adam", "adamw")[i % 2],
            "dataloader_shuffle_with_replacement": bool((i // 2) % 2),
        }
        value = (2.0 if flat else 1.5 + math.log10(lr / 1e-4)) if state == optuna.trial.TrialState.COMPLETE else None
        trials.append(optuna.trial.create_trial(params=params, distributions=DISTRIBUTIONS, value=value, state=state))
    study.add_trials(trials)
