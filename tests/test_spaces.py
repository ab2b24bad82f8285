"""Search-space files: the shipped ones load, bad ones are refused with file and line, samplers sample."""

from __future__ import annotations

import importlib.util
import math
import re
import warnings
from pathlib import Path

import optuna
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from artune.config import FIELD_NAMES, TrainConfig
from artune.spaces import MAX_CORNERS, SpaceError, load_space

REPO = Path(__file__).resolve().parent.parent
SHIPPED = sorted((REPO / "search_spaces").glob("*.yaml"))

optuna.logging.set_verbosity(optuna.logging.WARNING)

GOOD = """\
search:
  num_samples: 8
  max_concurrent: 2
  resources: {cpu: 1, gpu: 0}
  epochs: 3
  seed: 1
  scheduler: {name: asha, grace_period: 1, reduction_factor: 2}
fixed:
  seq_len: 16
  batch_size: 4
params:
  d_model: {choice: [32, 64]}
  n_heads: {choice: [2, 4]}
  lr: {loguniform: [1e-4, 1e-2]}
  grad_norm_clip: {uniform: [0.5, 2.0]}
  n_layers: {int: [1, 3], step: 1, log: false}
  dataloader_shuffle_with_replacement: {choice: [true, false]}
  optimizer: {choice: [adamw, noam]}
"""

CONDITIONAL = """\
search: {num_samples: 8, epochs: 2}
params:
  warmup: {int: [10, 100], step: 10, when: {optimizer: noam}}
  optimizer: {choice: [adamw, noam]}
  d_model: {choice: [32, 64]}
"""


def write(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def refused(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(SpaceError) as info:
        load_space(path)
    message = str(info.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- shipped files


def test_there_are_shipped_files() -> None:
    assert {"smoke.yaml", "default.yaml", "gpu.yaml"} <= {p.name for p in SHIPPED}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_file_loads_and_every_corner_is_a_valid_config(path: Path) -> None:
    space = load_space(path)
    space.check_configs()
    assert space.params, "a shipped space searches something"
    assert str(path) in space.describe()
    space.make_sampler()


def test_smoke_is_small() -> None:
    s = load_space(REPO / "search_spaces" / "smoke.yaml")
    assert s.settings.num_samples <= 4 and s.settings.epochs <= 3 and s.fixed["batches_per_epoch"] <= 20
    assert s.settings.gpu == 0 and s.settings.cpu == 1 and s.settings.max_concurrent == 2


def test_a_space_file_reads_as_documented(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, GOOD))
    s = space.settings
    assert (s.metric, s.mode, s.num_samples, s.max_concurrent, s.epochs, s.seed) == ("valid_loss", "min", 8, 2, 3, 1)
    assert (s.cpu, s.gpu, s.scheduler, s.grace_period, s.reduction_factor, s.sampler) == (1.0, 0.0, "asha", 1, 2.0, "tpe")
    assert space.fixed == {"seq_len": 16, "batch_size": 4}
    assert space.params["lr"].kind == "loguniform" and space.params["lr"].low == 1e-4  # 1e-4 is a number
    assert space.params["lr"].line == 14
    assert space.params["dataloader_shuffle_with_replacement"].values == (True, False)
    assert len(space.text_sha256) == 64


def test_defaults_and_fixed_values_under_params(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, "params:\n  lr: {loguniform: ['1e-4', 1.0e-2]}\n  seq_len: 32\n"))
    assert space.fixed == {"seq_len": 32}  # a plain value under params is fixed
    assert space.params["lr"].low == 1e-4  # numbers written as quoted text are read as numbers too
    s = space.settings
    assert (s.metric, s.mode, s.scheduler, s.max_concurrent, s.sampler) == ("valid_loss", "min", "asha", None, "tpe")
    acc = load_space(write(tmp_path, "search: {metric: valid_accuracy}\nparams: {lr: {loguniform: [1e-4, 1e-2]}}\n", "a.yaml"))
    assert acc.settings.mode == "max"  # the mode follows the metric unless written
    none = load_space(write(tmp_path, "search: {scheduler: none}\nparams: {lr: {loguniform: [1e-4, 1e-2]}}\n", "n.yaml"))
    assert none.settings.scheduler == "none"


# --------------------------------------------------------------------------- refusals, with file and line


def line_of(message: str, name: str = "space.yaml") -> list[int]:
    return [int(m) for m in re.findall(rf"{re.escape(name)}:(\d+)", message)]


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(SpaceError, match=r"nope\.yaml: search-space file not found"):
        load_space(tmp_path / "nope.yaml")
    write(tmp_path, GOOD, "inside.yaml")
    with pytest.raises(SpaceError, match="directory.*inside.yaml"):
        load_space(tmp_path)


@pytest.mark.parametrize(
    "text, line, pattern",
    [
        ("", 1, "empty"),
        ("# only a comment\n", 1, "empty"),
        ("- a\n- b\n", 1, "top level must be a mapping"),
        ("params: {}\nserch: {}\n", 2, r"unknown section \(did you mean 'search'\?\)"),
        ("params:\n  lr: {loguniform: [1e-4, 1e-2]\n", 3, "YAML syntax"),
        ("params:\n  lr: [1, 2\n  x: 1\n", 3, "YAML syntax"),
        ("params:\n  lr: {choice: [1e-3]}\n  lr: {choice: [1e-2]}\n", 3, r"keys must be unique.*first at line 2"),
        ("search:\n  seed: 1\n  epochs: 2\n  seed: 2\nparams: {}\n", 4, "keys must be unique"),
        ("params:\n  lr: !!python/object/apply:os.system [ls]\n", 2, r"python tags are refused, but got !!python/object/apply:os.system"),
        ("params:\n  d_modle: {choice: [32]}\n", 2, r"unknown key 'd_modle' \(did you mean 'd_model'\?\)"),
        ("fixed:\n  seq_len: 8\n  lrr: 0.1\n", 3, r"did you mean 'lr'"),
        ("params:\n  lr: {uniform: [2.0, 1.0]}\n", 2, r"low <= high must hold, but got low=2, high=1"),
        ("params:\n  lr: {loguniform: [0, 1.0]}\n", 2, "loguniform needs low > 0"),
        ("params:\n  n_layers: {int: [0, 8], log: true}\n", 2, "log needs low >= 1"),
        ("params:\n  d_model: {choice: []}\n", 2, "non-empty list"),
        ("params:\n\n  n_layers: {int: [1, 4], step: 0}\n", 3, "step >= 1 must hold"),
        ("params:\n  n_layers: {int: [1, 4], step: 2}\n", 2, r"multiple of step.*fix: high=3"),
        ("params:\n  n_layers: {int: [1.5, 4]}\n", 2, "int bounds must be integers"),
        ("params:\n  lr: {uniform: [a, b]}\n", 2, "uniform bounds must be finite numbers, but got \\['a', 'b'\\]"),
        ("params:\n  lr: {uniform: 0.1}\n", 2, r"needs \[low, high\]"),
        ("params:\n  d_model: {uniform: [32, 64]}\n", 2, r"d_model is an integer \(fix: use \{int"),
        ("params:\n  optimizer: {int: [1, 2]}\n", 2, "optimizer is text"),
        ("params:\n  lr: {loguniform: [1e-4, 1e-2], stepp: 2}\n", 2, "unknown option for loguniform"),
        ("params:\n  lr: {loguniform: [1e-4, 1e-2], uniform: [1, 2]}\n", 2, "exactly one of"),
        ("params:\n  lr: {low: 1}\n", 2, "needs one of loguniform"),
        ("params:\n  d_model: [32, 64]\n", 2, r"fix: \{choice: \[32, 64\]\}"),
        ("params:\n  n_heads: {choice: [2, 2.0]}\n", 2, "distinct"),
        ("params:\n  n_heads: {choice: [2, x]}\n", 2, "n_heads must be an integer, but got 'x'"),
        ("fixed:\n  seq_len: 8\nparams:\n  seq_len: {choice: [8, 16]}\n", 4, "either fixed or searched"),
        ("fixed:\n  epochs: 3\n", 2, "epochs is a search setting"),
        ("params:\n  tokenizer: {choice: [character, basic_english]}\n", 2, r"params.tokenizer: tokenizer is one for the whole search"),
        ("params:\n  lr: {uniform: [0.1, 1]}\n  dataset: {choice: [tiny_shakespeare, other.txt]}\n", 3, "corpus is encoded once"),
        ("fixed:\n  lr: {loguniform: [1e-4, 1e-2]}\n", 2, "move it to params"),
        ("search:\n  num_samples: 0\n", 2, r"search.num_samples: num_samples >= 1 must hold.*but got 0"),
        ("search:\n  resources: {cpu: 0}\n", 2, "cpu > 0 must hold"),
        ("search:\n  resources:\n    cpu: 1\n    gpu: 1.5\n", 4, "above 1 must be whole"),
        ("search:\n  resources: {gpu: -1}\n", 2, "gpu >= 0"),
        ("search:\n  resources: {cpus: 1}\n", 2, r"did you mean 'cpu'"),
        ("search:\n  epochs: 2\n  scheduler: {name: asha, grace_period: 3}\n", 3, "grace_period <= epochs"),
        ("search:\n  scheduler: {name: asha, reduction_factor: 1}\n", 2, "reduction_factor > 1"),
        ("search:\n  scheduler: hyperband\n", 2, "scheduler must be one of asha, none"),
        ("search:\n  mode: maximum\n", 2, "mode must be min or max"),
        ("search:\n  metric: valid_accuracy\n  mode: min\n", 3, "mode must be max"),
        ("search:\n  metric: val_loss\n", 2, r"did you mean 'valid_loss'"),
        ("search:\n  sampler: tpee\n", 2, r"did you mean 'tpe'"),
        ("search:\n  num_sample: 3\n", 2, r"did you mean 'num_samples'"),
        ("search:\n  max_concurrent: 0\n", 2, "max_concurrent >= 1"),
        ("search: {sampler: grid}\nparams:\n  d_model: {choice: [32, 64]}\n  lr: {loguniform: [1e-4, 1e-2]}\n", 4, "grid sampler needs a finite set"),
        ("params:\n  warmup: {int: [1, 9], when: {optimizer: noam}}\n", 2, "can never hold"),
        ("params:\n  warmup: {int: [1, 9], when: {optimiser: noam}}\n", 2, r"did you mean 'optimizer'"),
        ("params:\n  a: 1\n  lr: {uniform: [0.1, 1]}\n  warmup: {int: [1, 9], when: {optimizer: bogus}}\n", 2, "unknown key 'a'"),
        ("params:\n  lr: 1\n\x01\n", 3, "printable text"),
    ],
)
def test_bad_file_is_refused_naming_file_and_line(tmp_path: Path, text: str, line: int, pattern: str) -> None:
    message = refused(tmp_path, text)
    assert re.search(pattern, message), message
    assert line in line_of(message), message


def test_all_errors_are_reported_together(tmp_path: Path) -> None:
    text = "search:\n  num_samples: 0\nparams:\n  d_modle: {choice: [32]}\n  lr: {uniform: [2, 1]}\n  warmup: {int: [1, 10], when: {optimizer: nadam}}\n"
    message = refused(tmp_path, text)
    assert line_of(message) == [2, 4, 5, 6] and message.count("; ") == 3
    assert "space.yaml:6: params.warmup.when.optimizer: the condition can never hold" in message


def test_a_condition_on_a_refused_knob_waits_for_it(tmp_path: Path) -> None:
    # Judged against the default instead, the condition would be reported too, as if it were the mistake.
    text = "search:\n  epochs: 0\nparams:\n  optimizer: {choice: [adam, noam], stepp: 1}\n  warmup: {int: [1, 9], when: {optimizer: noam}}\n  lr: {uniform: [0.1, 0.2], when: {epochs: 3}}\n"
    message = refused(tmp_path, text)
    assert line_of(message) == [2, 4] and "can never hold" not in message


def test_numbers_yaml_11_reads_as_text_are_numbers(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, "fixed:\n  lr: 3e-4\n  weight_decay: 1.0e-2\nparams:\n  grad_norm_clip: {choice: [1e0, 2E+0]}\n"))
    assert space.fixed == {"lr": 3e-4, "weight_decay": 1e-2}
    assert space.params["grad_norm_clip"].values == (1.0, 2.0)
    # ... but text that merely looks like a number stays text where text is wanted.
    assert load_space(write(tmp_path, "fixed:\n  prompt: '1e3'\nparams: {}\n", "p.yaml")).fixed["prompt"] == "1e3"


def test_check_configs_names_the_offending_line(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, "fixed:\n  n_heads: 4\nparams:\n  lr: {loguniform: [1e-4, 1e-2]}\n  d_model: {choice: [64, 96, 90]}\n"))
    with pytest.raises(SpaceError) as info:
        space.check_configs()
    message = str(info.value)
    assert "n_heads must divide d_model, but got d_model=90, n_heads=4" in message
    assert line_of(message) == [5] and "params.d_model" in message


def test_check_configs_sees_conditions(tmp_path: Path) -> None:
    # noam needs warmup > 0: conditional warmup from 1 is fine, an unconditional one from 0 is not.
    load_space(write(tmp_path, "params:\n  optimizer: {choice: [adam, noam]}\n  warmup: {int: [1, 9], when: {optimizer: noam}}\n")).check_configs()
    bad = load_space(write(tmp_path, "params:\n  optimizer: {choice: [adam, noam]}\n  warmup: {int: [0, 9]}\n", "b.yaml"))
    with pytest.raises(SpaceError, match=r"b\.yaml:2: params\.optimizer: .*noam' needs warmup > 0"):
        bad.check_configs()


def test_check_configs_many_corners_checks_pairs(tmp_path: Path) -> None:
    knobs = "\n".join(f"  {k}: {{uniform: [0.1, 0.5]}}" for k in ("dropout", "weight_decay", "grad_norm_clip", "lr"))
    text = f"params:\n  d_model: {{choice: [32, 48, 64, 80, 96, 99]}}\n  n_heads: {{choice: [1, 2, 4, 8]}}\n{knobs}\n  seq_len: {{int: [8, 64], step: 8}}\n"
    space = load_space(write(tmp_path, text))
    with pytest.raises(SpaceError, match="d_model=99, n_heads=2"):
        space.check_configs()


def test_check_configs_pairs_vary_what_switches_a_knob_on(tmp_path: Path) -> None:
    """Past MAX_CORNERS, a pair whose knob is conditional is crossed with the values of its condition:
    at the others' first corner (optimizer adam) n_heads is never sampled."""
    text = ("params:\n  d_model: {choice: [96, 64]}\n  optimizer: {choice: [adam, adamw]}\n"
            "  n_heads: {choice: [4, 3], when: {optimizer: adamw}}\n  n_layers: {int: [1, 16]}\n"
            "  weight_decay: {choice: [0.0, 0.1]}\n  dropout: {choice: [0.0, 0.1]}\n  warmup: {int: [0, 20]}\n")
    space = load_space(write(tmp_path, text))
    assert math.prod(len(d.corners()) for d in space.params.values()) > MAX_CORNERS
    with pytest.raises(SpaceError, match=r"d_model=64, n_heads=3"):
        space.check_configs()


def test_check_configs_every_value_of_an_int_range_of_up_to_32_and_one_line_per_knob(tmp_path: Path) -> None:
    text = "params:\n  d_model: {int: [96, 672], step: 32}\n  n_heads: {choice: [3, 6]}\n"  # 19 values
    with pytest.raises(SpaceError) as info:
        load_space(write(tmp_path, text)).check_configs()
    message = str(info.value)
    assert message.count("params.d_model") == 1, message
    assert message.endswith("n_heads must divide d_model, but got d_model=128, n_heads=3 (and 23 more such configs)"), message


# --------------------------------------------------------------------------- sampling on a real Optuna storage


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
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "scipy" else find_spec(name, *args))
    with pytest.raises(SpaceError, match=r"^--sampler: sampler 'qmc' needs scipy, which artune depends on, .* install of artune is broken"):
        load_space(write(tmp_path, CONTINUOUS)).with_overrides(sampler="qmc")


@pytest.mark.parametrize(
    "bounds, step, values",
    [("[0.1, 0.3]", "0.1", [0.1, 0.2, 0.3]), ("[0, 0.9]", "0.3", [0.0, 0.3, 0.6, 0.9]), ("[1e-5, 5e-5]", "1e-5", [1e-5, 2e-5, 3e-5, 4e-5, 5e-5])],
)
def test_a_uniform_step_grid_is_the_values_as_written(tmp_path: Path, bounds: str, step: str, values: list) -> None:
    # Adding the step in floats gives 0.30000000000000004 past high=0.3, which the grid sampler warns about and trains.
    space = load_space(write(tmp_path, f"search: {{sampler: grid, num_samples: {len(values)}}}\nparams:\n  dropout: {{uniform: {bounds}, step: {step}}}\n"))
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


def test_sampling_order_puts_conditions_after_their_knobs(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, CONDITIONAL))
    assert list(space.params) == ["optimizer", "warmup", "d_model"]
    cycle = "params:\n  warmup: {int: [1, 2], when: {lr: 0.1}}\n  lr: {choice: [0.1, 0.2], when: {warmup: 1}}\n"
    assert "cycle" in refused(tmp_path, cycle)


# --------------------------------------------------------------------------- overrides


def test_overrides_apply_and_revalidate(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, GOOD))
    changed = space.with_overrides(num_samples=3, max_concurrent=None, epochs=5, sampler="random", gpu=0.5, seed=None)
    s = changed.settings
    assert (s.num_samples, s.max_concurrent, s.epochs, s.sampler, s.gpu, s.seed) == (3, 2, 5, "random", 0.5, 1)  # None keeps the file's
    assert space.settings.num_samples == 8  # the original is untouched
    assert space.with_overrides(metric="valid_accuracy").settings.mode == "max"
    with pytest.raises(SpaceError, match=r"^--num-samples: num_samples >= 1 must hold.*but got 0$"):
        space.with_overrides(num_samples=0)
    with pytest.raises(SpaceError, match=r"--sampler: sampler must be one of .*did you mean 'random'"):
        space.with_overrides(sampler="randm")
    with pytest.raises(SpaceError, match=r"--epochs: grace_period <= epochs"):
        load_space(write(tmp_path, "search: {scheduler: {grace_period: 3}, epochs: 4}\n", "g.yaml")).with_overrides(epochs=2)
    with pytest.raises(SpaceError, match=r"--sampler\).*needs a finite set"):
        space.with_overrides(sampler="grid")
    with pytest.raises(SpaceError, match="--num-sample: unknown search setting"):
        space.with_overrides(num_sample=3)


@pytest.mark.parametrize("written, seconds", [("900", 900.0), ("'90s'", 90.0), ("15m", 900.0), ("1.5h", 5400.0), ("null", None),
                                              ("1e3", 1000.0), ("'1e3'", 1000.0), ("1.5e1m", 900.0)])
def test_time_budget_reads_a_duration(tmp_path: Path, written: str, seconds) -> None:
    space = load_space(write(tmp_path, f"search:\n  num_samples: 2\n  time_budget: {written}\n"))
    assert space.settings.time_budget == seconds
    assert space.with_overrides(time_budget=60.0).settings.time_budget == 60.0  # --time-budget wins
    assert ("time budget" in space.describe()) == (seconds is not None)


@pytest.mark.parametrize("written", ["0", "-5m", "15 min", "soon", "true", "[15]"])
def test_a_bad_time_budget_names_file_line_and_rule(tmp_path: Path, written: str) -> None:
    message = refused(tmp_path, f"search:\n  num_samples: 2\n  time_budget: {written}\n")
    assert re.search(r"space\.yaml:3: search\.time_budget: time_budget must be a positive duration such as 900, 90s, 15m", message), message


def test_with_fixed_coerces_and_moves_searched_knobs(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, GOOD))
    changed = space.with_fixed({"d_model": "128", "lr": "3e-4", "dataloader_shuffle_with_replacement": "false", "d_ff": "none", "prompt_separator": "None"})
    assert changed.fixed["d_model"] == 128 and changed.fixed["lr"] == 3e-4 and changed.fixed["d_ff"] is None
    assert changed.fixed["prompt_separator"] is None  # optional text too: none is None, not the text 'none'
    assert changed.fixed["dataloader_shuffle_with_replacement"] is False
    assert "d_model" not in changed.params and "lr" not in changed.params and "d_model" in space.params
    trial = optuna.create_study().ask()
    assert changed.define_by_run(trial)["d_model"] == 128 and "d_model" not in trial.params
    with pytest.raises(SpaceError, match=r"--set d_modle=1: unknown key 'd_modle' \(did you mean 'd_model'\?\)"):
        space.with_fixed({"d_modle": "1"})
    with pytest.raises(SpaceError, match=r"--set seq_len=abc: seq_len must be an integer"):
        space.with_fixed({"seq_len": "abc"})
    with pytest.raises(SpaceError, match="--epochs"):
        space.with_fixed({"epochs": "3"})
    with pytest.raises(SpaceError, match="can never hold"):
        load_space(write(tmp_path, CONDITIONAL, "c.yaml")).with_fixed({"optimizer": "adam"})


# --------------------------------------------------------------------------- any text: loads or SpaceError


KEYS = st.sampled_from(
    ["search", "fixed", "params", "when", "choice", "int", "uniform", "loguniform", "step", "log", "resources",
     "scheduler", "name", "grace_period", "epochs", "sampler", "num_samples", "metric", "mode", "cpu", "gpu",
     "optimizer", "noam", "asha", "grid", "xyz", ""] + list(FIELD_NAMES[:12])
)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.integers(-3, 70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
    st.sampled_from(["1e-3", "tpe", "grid", "qmc", "cmaes", "random", "none", "asha", "noam", "min", "max", "valid_accuracy"]),
)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=4)), max_leaves=12)


def loads_or_space_error(text: str, tmp_path: Path) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(text.encode("utf-8"))
    try:
        space = load_space(path)
        space.check_configs()
        space.describe()
        space.make_sampler()
    except SpaceError as error:
        assert "fuzz.yaml" in str(error) and "\n" not in str(error)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(document=st.dictionaries(KEYS, VALUES, max_size=4))
def test_any_mapping_loads_or_raises_space_error(tmp_path: Path, document: dict) -> None:
    loads_or_space_error(yaml.safe_dump(document, default_flow_style=None), tmp_path)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(text=st.one_of(st.text(max_size=80), st.text(alphabet=":-[]{}!&*#|>'\"%@` \n\tab1e.", max_size=60)))
def test_any_text_loads_or_raises_space_error(tmp_path: Path, text: str) -> None:
    loads_or_space_error(text, tmp_path)


@pytest.mark.parametrize("sampler", ["random", "tpe", "qmc"])
def test_an_extensions_sampler_does_not_repeat_the_first_runs_draws(tmp_path, sampler):
    """``--extend``'s k-th run seeds its sampler with seed + k - 1; the first run keeps the seed itself."""
    space = load_space(write(tmp_path, f"search: {{sampler: {sampler}, seed: 3}}\nparams: {{lr: {{loguniform: [1e-4, 1e-2]}}}}\n"))

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
        extension.add_trial(optuna.trial.create_trial(params=trial.params, distributions=trial.distributions, value=0.0))
    extension.optimize(lambda trial: (space.define_by_run(trial), 0.0)[1], n_trials=10)
    assert sorted(t.params["n_layers"] for t in extension.trials) == list(range(1, 21))


def test_an_extension_of_the_largest_seed_wraps_around(tmp_path):
    space = load_space(write(tmp_path, f"search: {{sampler: random, seed: {2**32 - 1}}}\nparams: {{lr: {{loguniform: [1e-4, 1e-2]}}}}\n"))
    optuna.create_study(sampler=space.make_sampler(2)).optimize(lambda trial: (space.define_by_run(trial), 0.0)[1], n_trials=1)
