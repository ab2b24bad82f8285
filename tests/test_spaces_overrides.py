"""The command line's changes to a loaded space: settings (--num-samples, ...), and --set key=value."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import optuna
import pytest

from artune.spaces import OVERRIDE_FLAGS, SETTING_NAMES, SearchSettings, SpaceError, load_space
from tests.test_spaces import CONDITIONAL, GOOD, refused, write

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_overrides_apply_and_revalidate(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, GOOD))
    changed = space.with_overrides(num_samples=3, max_concurrent=None, epochs=5, sampler="random", gpu=0.5, seed=None)
    s = changed.settings
    # None keeps the file's
    assert (s.num_samples, s.max_concurrent, s.epochs, s.sampler, s.gpu, s.seed) == (3, 2, 5, "random", 0.5, 1)
    assert space.settings.num_samples == 8  # the original is untouched
    assert space.with_overrides(metric="valid_accuracy").settings.mode == "max"
    with pytest.raises(SpaceError, match=r"^--num-samples: num_samples >= 1 must hold.*but got 0$"):
        space.with_overrides(num_samples=0)
    with pytest.raises(SpaceError, match=r"--sampler: sampler must be one of .*did you mean 'random'"):
        space.with_overrides(sampler="randm")
    with pytest.raises(SpaceError, match=r"--epochs: grace_period <= epochs"):
        grace = load_space(write(tmp_path, "search: {scheduler: {grace_period: 3}, epochs: 4}\n", "g.yaml"))
        grace.with_overrides(epochs=2)
    with pytest.raises(SpaceError, match=r"--sampler\).*needs a finite set"):
        space.with_overrides(sampler="grid")
    with pytest.raises(SpaceError, match="--num-sample: unknown search setting"):
        space.with_overrides(num_sample=3)


@pytest.mark.parametrize(
    "written, seconds",
    [
        ("900", 900.0),
        ("'90s'", 90.0),
        ("15m", 900.0),
        ("1.5h", 5400.0),
        ("null", None),
        ("1e3", 1000.0),
        ("'1e3'", 1000.0),
        ("1.5e1m", 900.0),
    ],
)
def test_time_budget_reads_a_duration(tmp_path: Path, written: str, seconds) -> None:
    space = load_space(write(tmp_path, f"search:\n  num_samples: 2\n  time_budget: {written}\n"))
    assert space.settings.time_budget == seconds
    assert space.with_overrides(time_budget=60.0).settings.time_budget == 60.0  # --time-budget wins
    assert ("time budget" in space.describe()) == (seconds is not None)


@pytest.mark.parametrize("written", ["0", "-5m", "15 min", "soon", "true", "[15]"])
def test_a_bad_time_budget_names_file_line_and_rule(tmp_path: Path, written: str) -> None:
    message = refused(tmp_path, f"search:\n  num_samples: 2\n  time_budget: {written}\n")
    rule = r"space\.yaml:3: search\.time_budget: time_budget must be a positive duration such as 900, 90s, 15m"
    assert re.search(rule, message), message


def test_with_fixed_coerces_and_moves_searched_knobs(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, GOOD))
    changed = space.with_fixed(
        {
            "d_model": "128",
            "lr": "3e-4",
            "dataloader_shuffle_with_replacement": "false",
            "d_ff": "none",
            "prompt_separator": "None",
        }
    )
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
    # a fixed value that breaks its rule whatever is sampled is wrong on its own: said so, not as one of the sampled
    # configs ("a config this space can sample is invalid ... (and 31 more such configs)")
    smoke = load_space(Path(__file__).resolve().parent.parent / "search_spaces" / "smoke.yaml")
    with pytest.raises(SpaceError) as refused_alone:
        smoke.with_fixed({"precision": "bf61"}).check_configs()
    assert str(refused_alone.value) == (
        "--set precision=bf61: fixed.precision: precision must be one of auto, fp32, bf16, but got 'bf61' "
        "(did you mean 'bf16'?)"
    )
    with pytest.raises(SpaceError, match="can never hold"):
        load_space(write(tmp_path, CONDITIONAL, "c.yaml")).with_fixed({"optimizer": "adam"})
    # a --set that breaks a rule with a searched knob is named, not the searched knob's line of the file (a review)
    with pytest.raises(SpaceError) as with_searched:
        smoke.with_fixed({"n_heads": "3"}).check_configs()
    assert str(with_searched.value).startswith("--set n_heads=3: fixed.n_heads: a config this space can sample is "), (
        str(with_searched.value)
    )
    # where some of the searched values fit the --set, the searched knob's line is where to look
    with pytest.raises(
        SpaceError, match=r"smoke\.yaml:\d+: params\.d_model: a config this space can sample is invalid"
    ):
        smoke.with_fixed({"n_heads": "64"}).check_configs()


def test_the_settings_the_command_line_overrides_are_named_once_in_search_settings() -> None:
    """The driver builds its options from this metadata, so a setting renamed there is renamed on the CLI too."""
    assert OVERRIDE_FLAGS == {
        "num_samples": "--num-samples",
        "max_concurrent": "--max-concurrent",
        "cpu": "--cpus-per-trial",
        "gpu": "--gpus-per-trial",
        "workers": "--workers-per-trial",
        "epochs": "--epochs",
        "seed": "--seed",
        "time_budget": "--time-budget",
        "log": "--log",
    }
    flagged = [f for f in dataclasses.fields(SearchSettings) if "flag" in f.metadata]
    assert [f.name for f in flagged] == list(OVERRIDE_FLAGS) and all(f.metadata["help"] for f in flagged)
    assert set(OVERRIDE_FLAGS) <= set(SETTING_NAMES)


def test_an_override_error_names_the_flag_the_user_typed(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, GOOD))
    # one rule for every value above 1, whole or not (two rules that contradicted each other before)
    with pytest.raises(SpaceError, match=r"^--gpus-per-trial: gpu <= 1 must hold \(GPUs per worker.*but got 1.5$"):
        space.with_overrides(OVERRIDE_FLAGS, gpu=1.5)
    with pytest.raises(SpaceError, match=r"^--gpus-per-trial: gpu >= 0 must hold \(GPUs per worker\), but got -1"):
        space.with_overrides(OVERRIDE_FLAGS, gpu=-1)
    with pytest.raises(SpaceError, match=r"^--cpus-per-trial: cpu > 0 must hold \(cpus per trial\), but got 0$"):
        space.with_overrides(OVERRIDE_FLAGS, cpu=0)
    with pytest.raises(SpaceError, match=r"^--workers-per-trial: workers >= 1 must hold .*, but got 0$"):
        space.with_overrides(OVERRIDE_FLAGS, workers=0)
    # a worker trains on one GPU: more of them are more workers
    with pytest.raises(
        SpaceError, match=r"^--gpus-per-trial: gpu <= 1 must hold .*--workers-per-trial 2 --gpus-per-trial 1"
    ):
        space.with_overrides(OVERRIDE_FLAGS, gpu=2)
    assert space.with_overrides(OVERRIDE_FLAGS, workers=2, gpu=1).settings.workers == 2
    with pytest.raises(
        SpaceError, match=r"^--workers-per-trial: workers <= batch_size must hold .*workers=99, batch_size="
    ):
        space.with_overrides(OVERRIDE_FLAGS, workers=99)
