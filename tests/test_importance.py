"""artune.importance on real Optuna SQLite studies: importances only where there are enough finished trials."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest

from artune.importance import MIN_TOP_TRIALS, TARGET_QUANTILE, param_importances, trials_needed
from artune.results import ResultsError, load
from tests import _results_fixture as fx
from tests._importance_fixture import add_trials


def test_forty_one_finished_trials_hold_five_in_the_best_tenth() -> None:
    assert trials_needed() == 41
    assert math.ceil(TARGET_QUANTILE * 41) == MIN_TOP_TRIALS > math.ceil(TARGET_QUANTILE * 40)


def test_one_finished_trial_is_too_few_not_an_equal_share_per_knob(tmp_path: Path) -> None:
    """The newcomer's case: Optuna itself gives every knob 0.25 here."""
    directory = tmp_path / fx.NAME
    fx.build_search(directory, optuna_db=True)
    study = optuna.load_study(study_name=fx.NAME, storage=f"sqlite:///{directory / 'optuna.db'}")
    one = optuna.create_study()
    one.add_trial(study.trials[0])
    assert set(optuna.importance.get_param_importances(one).values()) == {0.25}
    with pytest.raises(ResultsError, match=r"^too few finished trials for parameter importances: .* has 1 COMPLETE"):
        param_importances(one)


def test_stopped_trials_do_not_count(tmp_path: Path) -> None:
    directory = fx.build_search(tmp_path / fx.NAME, optuna_db=True)  # 5 COMPLETE
    add_trials(directory, 50, optuna.trial.TrialState.PRUNED)
    add_trials(directory, 35)
    with pytest.raises(ResultsError, match=r"has 40 COMPLETE \(stopped and failed trials do not count\).* needs 41"):
        param_importances(load(directory))


def test_enough_finished_trials_give_importances_that_sum_to_one(tmp_path: Path) -> None:
    directory = fx.build_search(tmp_path / fx.NAME, optuna_db=True)
    add_trials(directory, 36)
    importances = param_importances(load(directory))
    assert set(importances.index) == set(fx.PARAMS)
    assert importances.sum() == pytest.approx(1.0)
    assert importances.index[0] == "lr"  # the knob the values follow
    assert importances.is_monotonic_decreasing


def test_values_that_do_not_tell_the_knobs_apart_give_no_numbers(tmp_path: Path) -> None:
    directory = tmp_path / fx.NAME
    directory.mkdir()
    fx.write_json_atomic(fx.manifest(), directory / fx.MANIFEST_FILE)
    optuna.create_study(study_name=fx.NAME, storage=f"sqlite:///{directory / 'optuna.db'}")
    add_trials(directory, 41, flat=True)
    with pytest.raises(ResultsError, match="the 41 finished trials' values do not tell the knobs apart"):
        param_importances(optuna.load_study(study_name=fx.NAME, storage=f"sqlite:///{directory / 'optuna.db'}"))


def test_a_search_without_a_study_says_so(tmp_path: Path) -> None:
    directory = fx.build_search(tmp_path / fx.NAME)
    with pytest.raises(ResultsError, match=f"no Optuna study at {directory / 'optuna.db'}"):
        param_importances(load(directory))


def test_a_damaged_study_or_one_under_another_name_is_one_line(tmp_path: Path) -> None:
    """SQLAlchemy's DatabaseError and Optuna's KeyError ('Record does not exist.') came through as tracebacks, which
    the notebook's cell (catching ResultsError) did not catch (a review)."""
    import json

    directory = fx.build_search(tmp_path / fx.NAME, optuna_db=True)
    manifest = json.loads((directory / "manifest.json").read_text())
    (directory / "manifest.json").write_text(json.dumps({**manifest, "study_name": "other"}))
    with pytest.raises(ResultsError, match=r"^no Optuna study 'other' in sqlite:///.*optuna\.db$"):
        param_importances(load(directory))
    (directory / "manifest.json").write_text(json.dumps(manifest))
    database = directory / "optuna.db"
    data = bytearray(database.read_bytes())
    data[100:4000] = b"x" * 3900  # past SQLite's header: its schema pages
    database.write_bytes(data)
    with pytest.raises(ResultsError, match=r"^the Optuna study '.*' in sqlite:///.* cannot be read \(DatabaseError: "):
        param_importances(load(directory))
