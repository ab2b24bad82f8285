"""The Optuna adapter on a real Optuna storage: define-by-run, every sampler, the grid, seeds, extensions."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import optuna
import pytest

from artune.config import TrainConfig
from artune.spaces import SpaceError, load_space
from tests.test_spaces import CONDITIONAL, refused, write

optuna.logging.set_verbosity(optuna.logging.WARNING)

SAMPLERS = ["tpe", "random", "grid", "qmc", "cmaes"]
DISCRETE = """\
search: {num_samples: 6, epochs: 2, seed: 3}
fixed: {seq_len: 16, batch_size: 4}
params:
  warmup: {int: [10, 30], step: 10, when: {optimizer: noam}}
  optimizer: {choice: [adamw, noam]}
  d_model: {choice: [32, 64]}
  n_layers: {int: [1, 2]}
  grad_norm_clip: {uniform: [0.5, 1.0], step: 0.25}
  d_ff: {choice: [null, 64]}
  dataloader_shuffle_with_replacement: {choice: [true, false]}
"""
CONTINUOUS = DISCRETE + "  lr: {loguniform: [1e-4, 1e-2]}\n"


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> optuna.storages.RDBStorage:
    # One SQLite file for the module: creating its schema is the slow part.
    return optuna.storages.RDBStorage(f"sqlite:///{tmp_path_factory.mktemp('optuna') / 'study.db'}")


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_define_by_run_samples_valid_configs(tmp_path: Path, sampler: str, storage: optuna.storages.RDBStorage) -> None:
    text = DISCRETE if sampler == "grid" else CONTINUOUS
    space = load_space(write(tmp_path, text)).with_overrides(sampler=sampler)
    space.check_configs()
    study = optuna.create_study(storage=storage, study_name=sampler, sampler=space.make_sampler(), direction="minimize")
    for i in range(6):
        trial = study.ask()
        constants = space.define_by_run(trial)
        assert constants == {"seq_len": 16, "batch_size": 4, "epochs": 2}
        assert ("warmup" in trial.params) == (trial.params["optimizer"] == "noam")  # the condition holds
        assert isinstance(trial.params["dataloader_shuffle_with_replacement"], bool)
        assert isinstance(trial.params["n_layers"], int)
        config = space.config_for(trial.params)
        assert isinstance(config, TrainConfig) and config.epochs == 2
        study.tell(trial, float(i))
    assert len(study.trials) == 6


def test_a_missing_sampler_package_is_a_broken_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *args: None if name == "scipy" else find_spec(name, *args)
    )
    broken = r"^--sampler: sampler 'qmc' needs scipy, which artune depends on, .* install of artune is broken"
    with pytest.raises(SpaceError, match=broken):
        load_space(write(tmp_path, CONTINUOUS)).with_overrides(sampler="qmc")


@pytest.mark.parametrize(
    "bounds, step, values",
    [
        ("[0.1, 0.3]", "0.1", [0.1, 0.2, 0.3]),
        ("[0, 0.9]", "0.3", [0.0, 0.3, 0.6, 0.9]),
        ("[1e-5, 5e-5]", "1e-5", [1e-5, 2e-5, 3e-5, 4e-5, 5e-5]),
    ],
)
def test_a_uniform_step_grid_is_the_values_as_written(tmp_path: Path, bounds: str, step: str, values: list) -> None:
    # Adding the step in floats gives 0.30000000000000004 past high=0.3, which the grid sampler warns about and trains.
    search = f"search: {{sampler: grid, num_samples: {len(values)}}}\n"
    text = search + f"params:\n  dropout: {{uniform: {bounds}, step: {step}}}\n"
    space = load_space(write(tmp_path, text))
    assert space.grid() == {"dropout": values} and space.params["dropout"].corners() == values

    def objective(trial: optuna.Trial) -> float:
        space.define_by_run(trial)
        return 0.0

    study = optuna.create_study(sampler=space.make_sampler())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Optuna's "out of range of the parameter" warning fails the trial
        study.optimize(objective, n_trials=len(values))
    assert sorted(t.params["dropout"] for t in study.trials) == values


def test_grid_is_the_product_of_discrete_values(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, DISCRETE)).with_overrides(sampler="grid")
    grid = space.grid()
    assert grid["warmup"] == [10, 20, 30] and grid["grad_norm_clip"] == [0.5, 0.75, 1.0] and grid["d_ff"] == [None, 64]
    assert "grid of 288 points" in space.describe()


def test_samplers_are_seeded(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, CONTINUOUS))
    draws = []
    for _ in range(2):
        study = optuna.create_study(sampler=space.make_sampler())
        trial = study.ask()
        space.define_by_run(trial)
        draws.append(trial.params)
    assert draws[0] == draws[1]


STEPPED_CONDITION = """search: {sampler: random, seed: 0}
params:
  dropout: {uniform: [0, 0.3], step: 0.05}
  n_layers: {int: [1, 3], when: {dropout: [0.15, 0.3]}}
"""


def test_a_condition_on_a_stepped_uniform_holds_at_its_sampled_steps(tmp_path: Path) -> None:
    """Optuna samples the step 0.15 as 0.15000000000000002, which the condition's 0.15 did not match: the knob was
    sampled at 0.3 only (a review; the grid and the corner check use the exact 0.15)."""
    space = load_space(write(tmp_path, STEPPED_CONDITION))
    study = optuna.create_study(sampler=space.make_sampler())
    with_knob = set()
    for _ in range(60):
        trial = study.ask()
        space.define_by_run(trial)
        if "n_layers" in trial.params:
            with_knob.add(round(trial.params["dropout"], 9))
        study.tell(trial, 0.0)
    assert with_knob == {0.15, 0.3}
    assert space.holds({"dropout": (0.15,)}, {"dropout": 3 * 0.05}) and not space.holds(
        {"dropout": (0.15,)}, {"dropout": 0.2}
    )


def test_sampling_order_puts_conditions_after_their_knobs(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, CONDITIONAL))
    assert list(space.params) == ["optimizer", "warmup", "d_model"]
    cycle = "params:\n  warmup: {int: [1, 2], when: {lr: 0.1}}\n  lr: {choice: [0.1, 0.2], when: {warmup: 1}}\n"
    assert "cycle" in refused(tmp_path, cycle)


@pytest.mark.parametrize("sampler", ["random", "tpe", "qmc"])
def test_an_extensions_sampler_does_not_repeat_the_first_runs_draws(tmp_path, sampler):
    """``--extend``'s k-th run seeds its sampler with seed + k - 1; the first run keeps the seed itself."""
    text = f"search: {{sampler: {sampler}, seed: 3}}\nparams: {{lr: {{loguniform: [1e-4, 1e-2]}}}}\n"
    space = load_space(write(tmp_path, text))

    def draws(*run: int) -> list[float]:
        study = optuna.create_study(sampler=space.make_sampler(*run))
        study.optimize(lambda trial: (space.define_by_run(trial), 0.0)[1], n_trials=4)
        return [t.params["lr"] for t in study.trials]

    first = draws()
    assert draws(1) == first
    assert first != draws(2) and draws(2) != draws(3)


def test_an_extension_of_a_grid_runs_the_points_not_run_yet(tmp_path):
    """Reseeded for the extension, the grid was shuffled anew: 4-6 of its 10 new trials repeated earlier points."""
    space = load_space(write(tmp_path, "search: {sampler: grid, seed: 3}\nparams: {n_layers: {int: [1, 20]}}\n"))
    first = optuna.create_study(sampler=space.make_sampler(1))
    first.optimize(lambda trial: (space.define_by_run(trial), 0.0)[1], n_trials=10)
    extension = optuna.create_study(sampler=space.make_sampler(2))
    for trial in first.trials:  # the warm start, as study.warm_start_storage gives it
        warm = optuna.trial.create_trial(params=trial.params, distributions=trial.distributions, value=0.0)
        extension.add_trial(warm)
    extension.optimize(lambda trial: (space.define_by_run(trial), 0.0)[1], n_trials=10)
    assert sorted(t.params["n_layers"] for t in extension.trials) == list(range(1, 21))


def test_an_extension_of_the_largest_seed_wraps_around(tmp_path):
    text = f"search: {{sampler: random, seed: {2**32 - 1}}}\nparams: {{lr: {{loguniform: [1e-4, 1e-2]}}}}\n"
    space = load_space(write(tmp_path, text))
    study = optuna.create_study(sampler=space.make_sampler(2))
    study.optimize(lambda trial: (space.define_by_run(trial), 0.0)[1], n_trials=1)
