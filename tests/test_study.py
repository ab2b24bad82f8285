"""The persistent Optuna study tells the truth, and ``--extend`` grows a finished search."""

from __future__ import annotations

import textwrap

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from artune.results import TrialRecord, load
from artune.spaces import SpaceError, load_space
from artune.study import frozen_trial, grid_draws, sync_study, warm_start_storage
from tests.test_search import cli

# Four grid points, two at a time, ASHA over three epochs; lr=1e6 without clipping goes NaN.
SPACE = textwrap.dedent(
    """
    search:
      num_samples: 4
      max_concurrent: 2
      resources: {cpu: 1}
      epochs: 3
      sampler: grid
      seed: 0
      scheduler: {name: asha, grace_period: 1, reduction_factor: 2}
    fixed:
      seq_len: 32
      batch_size: 8
      batches_per_epoch: 40
      d_model: 32
      n_layers: 1
      n_heads: 2
      optimizer: adamw
      grad_norm_clip: 1.0e9
      sample_tokens: 4
      device: cpu
    params:
      lr: {choice: [0.0003, 0.003, 0.01, 1000000.0]}
    """
)


@pytest.fixture(scope="module")
def searched(tmp_path_factory, shakespeare_path):
    root = tmp_path_factory.mktemp("study")
    space = root / "nan.yaml"
    space.write_text(SPACE)
    first = cli(str(space), "--results-dir", str(root), "--name", "truth", "--data", str(shakespeare_path))
    assert first.returncode == 0, first.stderr[-3000:]
    before = load(root / "truth")
    study_before = optuna.load_study(study_name="truth", storage=f"sqlite:///{root / 'truth' / 'optuna.db'}")
    return root / "truth", before, study_before.get_trials()


@pytest.mark.slow
def test_the_study_records_pruned_complete_and_failed_trials_truthfully(searched):
    directory, before, trials = searched
    by_id = {t.user_attrs["trial_id"]: t for t in trials}
    assert len(trials) == 4 and set(by_id) == set(before.trials["trial_id"])
    states = {t.state for t in trials}
    assert TrialState.RUNNING not in states
    for _, row in before.trials.iterrows():
        trial = by_id[row["trial_id"]]
        assert trial.params == {"lr": row["lr"]}
        assert trial.user_attrs["status"] == row["status"]
        assert trial.user_attrs["epochs_completed"] == row["epochs_completed"]
        epochs = before.epochs[before.epochs.trial_id == row["trial_id"]].sort_values("epoch")
        assert trial.intermediate_values == dict(zip(epochs["epoch"], epochs["valid_loss"]))
        if row["status"] == "completed":
            assert trial.state == TrialState.COMPLETE and trial.value == epochs["valid_loss"].iloc[-1]
        elif row["status"] == "stopped":
            assert trial.state == TrialState.PRUNED and len(trial.intermediate_values) == row["epochs_completed"] < 3
        else:
            assert row["status"] == "diverged" and trial.state == TrialState.FAIL
    assert by_id[before.trials.loc[before.trials.lr == 1e6, "trial_id"].item()].state == TrialState.FAIL
    assert TrialState.PRUNED in states and TrialState.COMPLETE in states
    importances = optuna.importance.get_param_importances(
        optuna.load_study(study_name="truth", storage=f"sqlite:///{directory / 'optuna.db'}")
    )
    assert set(importances) == {"lr"}


@pytest.mark.slow
def test_the_diverged_trial_is_a_row_not_a_crash(searched):
    _, before, _ = searched
    diverged = before.trials[before.trials.status == "diverged"]
    assert len(diverged) == 1
    row = diverged.iloc[0]
    assert row["lr"] == 1e6 and "training loss became nan" in row["error"]
    assert row["epochs_completed"] == 0


@pytest.mark.slow
def test_extend_adds_exactly_k_trials_and_keeps_every_earlier_row(tmp_path, shakespeare_path):
    """A grid of six points (one lr diverges), four run first: an extension by three would train a point again,
    and is refused before anything starts; by two it runs the two points not run yet."""
    space = tmp_path / "grid.yaml"
    space.write_text(SPACE.replace("[0.0003, 0.003, 0.01, 1000000.0]", "[0.0003, 0.003, 0.01, 1000000.0, 0.001, 0.02]"))
    common = ("--results-dir", str(tmp_path), "--name", "truth", "--data", str(shakespeare_path))
    first = cli(str(space), *common)
    assert first.returncode == 0, first.stderr[-3000:]
    directory = tmp_path / "truth"
    before = load(directory)
    past = cli(*common, "--extend", "--num-samples", "3")
    assert past.returncode == 2 and past.stderr.strip().splitlines() == [
        "error: --num-samples: the grid has 6 points and the search's earlier runs drew 4: 2 left, but num_samples "
        "is 3: 1 of them would train a point already trained (fix: --num-samples 2)"
    ], past.stderr
    extended = cli(*common, "--extend", "--num-samples", "2")
    assert extended.returncode == 0, extended.stderr[-3000:]
    assert "sampler warm-started from 4 earlier trials" in extended.stdout
    after = load(directory)
    assert len(after.trials) == 6
    old_ids = list(before.trials["trial_id"])
    assert list(after.trials["trial_id"][:4]) == old_ids
    pd.testing.assert_frame_equal(after.trials.iloc[:4].reset_index(drop=True), before.trials)
    old_epochs = after.epochs[after.epochs.trial_id.isin(old_ids)].reset_index(drop=True)
    pd.testing.assert_frame_equal(old_epochs, before.epochs)
    study = optuna.load_study(study_name="truth", storage=f"sqlite:///{directory / 'optuna.db'}")
    assert len(study.trials) == 6
    assert TrialState.RUNNING not in {t.state for t in study.trials}
    assert after.manifest["runs"] == ["tune", "tune-2"] and after.manifest["num_samples"] == 6
    assert sorted(after.trials["lr"]) == [0.0003, 0.001, 0.003, 0.01, 0.02, 1e6]  # each point once


def test_an_extended_grid_goes_on_with_the_points_not_run_yet(tmp_path):
    """Optuna's grid sampler gives its k-th trial the k-th point of the grid as its seed shuffles it: the warm start
    holds one trial per earlier draw (two repeats share one; one stopped before its first epoch counts), so that an
    extension runs the points not run yet. With a trial per replicate, it skipped points and ran others twice."""
    lrs = [0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03]
    space_file = tmp_path / "s.yaml"
    space_file.write_text(SPACE.replace("[0.0003, 0.003, 0.01, 1000000.0]", str(lrs)))
    space = load_space(space_file)

    def draw(study: optuna.Study) -> float:
        trial = study.ask()
        space.define_by_run(trial)
        return trial.params["lr"]

    first = optuna.create_study(sampler=space.make_sampler(1))
    drawn = [draw(first) for _ in range(3)]
    records = []
    for k, (lr, status, epochs) in enumerate(zip(drawn, ["completed", "stopped", "stopped"], [3, 1, 0])):
        for seed in (0, 1):  # --repeats 2
            record = TrialRecord(f"t{k}-{seed}", {"lr": lr, "seed": seed}, status, config_id=f"c{k}")
            for epoch in range(1, epochs + 1):
                record.epochs[epoch] = {"epoch": epoch, "valid_loss": 3.0, "valid_accuracy": 0.2, "seconds": 1.0}
            records.append(record)
    storage, n = warm_start_storage(records, space, "grid")
    assert n == 3
    extension = optuna.load_study(study_name="grid", storage=storage, sampler=space.make_sampler(2))
    rest = [draw(extension) for _ in range(3)]
    assert sorted(drawn + rest) == lrs, (drawn, rest)


def test_an_extended_grid_counts_each_draw_of_a_configuration_its_conditions_collapse(tmp_path):
    """Two grid points that differ only in a knob their condition switches off (warmup, where the optimizer is not
    noam) are one configuration (one config_id) drawn twice: both draws count. A lost trial does not: the resume
    drew its configuration again as the same point."""
    from artune.results.tables import LOST_ERROR
    from artune.search.recorder import config_id

    space_file = tmp_path / "s.yaml"
    space_file.write_text(
        SPACE.replace("  optimizer: adamw\n", "").replace(
            "  lr: {choice: [0.0003, 0.003, 0.01, 1000000.0]}",
            "  optimizer: {choice: [adamw, noam]}\n  warmup: {choice: [100, 400], when: {optimizer: noam}}\n"
            "  lr: {choice: [0.001, 0.003]}",
        )
    )
    space = load_space(space_file)
    first = optuna.create_study(sampler=space.make_sampler(1))
    records = []
    for k in range(6):
        trial = first.ask()
        space.define_by_run(trial)
        config = {**trial.params, "seed": 0}
        records.append(TrialRecord(f"t{k}", config, "stopped", config_id=config_id(config)))
    assert len({r.config_id for r in records}) < 6  # some points collapsed into one configuration
    lost = TrialRecord("lost", records[0].config, "error", LOST_ERROR, config_id=records[0].config_id)
    storage, n = warm_start_storage([*records, lost], space, "grid")
    assert n == 6
    extension = optuna.load_study(study_name="grid", storage=storage, sampler=space.make_sampler(2))
    for _ in range(2):
        space.define_by_run(extension.ask())
    assert [t.system_attrs["grid_id"] for t in extension.trials[n:]] == [6, 7]  # the two points not run yet
    # an --extend's num_samples is checked against the same count (it counted configurations: 5 drawn, 3 left)
    assert len(grid_draws([*records, lost], space)) == 6
    space.with_overrides(num_samples=2).check_grid_fits(6)
    with pytest.raises(SpaceError, match="the grid has 8 points and the search's earlier runs drew 6: 2 left"):
        space.with_overrides(num_samples=3).check_grid_fits(6)


def test_the_warm_started_sampler_receives_the_earlier_trials(tmp_path):
    space_file = tmp_path / "s.yaml"
    space_file.write_text(SPACE.replace("sampler: grid", "sampler: tpe"))  # a sampler that learns (grid: below)
    space = load_space(space_file)
    records = []
    for i, (lr, status) in enumerate(
        [(0.0003, "completed"), (0.003, "stopped"), (1e6, "diverged"), (0.01, "running"), (0.005, "stopped")]
    ):
        record = TrialRecord(f"t{i}", {"lr": lr, "seed": 0}, status)
        if status in ("completed", "stopped") and i < 4:  # the last: the budget stopped it before its first epoch
            for epoch in (1, 2, 3)[: 3 if status == "completed" else 1]:
                record.epochs[epoch] = {
                    "epoch": epoch,
                    "valid_loss": 3.0 - 0.1 * epoch,
                    "valid_accuracy": 0.2,
                    "tokens_per_sec": 1000.0,
                    "seconds": 1.0,
                }
        records.append(record)
    storage, n = warm_start_storage(records, space, "warm")
    assert n == 3  # the running trial is not finished, and the last never trained: neither is history
    seen = []

    class Spy(optuna.samplers.RandomSampler):
        """Records the finished trials a sampler is shown when it samples."""

        def sample_independent(self, study, trial, param_name, param_distribution):
            seen.append([t.state for t in study.get_trials(deepcopy=False) if t.state.is_finished()])
            return super().sample_independent(study, trial, param_name, param_distribution)

    study = optuna.load_study(study_name="warm", storage=storage, sampler=Spy(seed=0))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL]
    assert study.trials[0].value == pytest.approx(2.7)
    assert study.trials[0].intermediate_values == {1: 2.9, 2: 2.8, 3: 2.7}
    space.define_by_run(study.ask())
    assert seen == [[TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL]]
    assert frozen_trial(records[3], space, "valid_loss") is None
    assert frozen_trial(records[4], space, "valid_loss") is None


def test_an_errored_trial_that_a_resume_ran_again_is_added_again_when_it_ends_otherwise(tmp_path):
    space_file = tmp_path / "s.yaml"
    space_file.write_text(SPACE)
    space = load_space(space_file)
    study = optuna.create_study(direction="minimize")
    record = TrialRecord("t0", {"lr": 0.003, "seed": 0}, "error", "RuntimeError: out of memory")
    assert sync_study(study, [record], space, "valid_loss") == 1
    assert sync_study(study, [record], space, "valid_loss") == 0
    record.status, record.error = "completed", None  # --resume ran it again, and it trained every epoch
    for epoch in (1, 2, 3):
        record.epochs[epoch] = {
            "epoch": epoch,
            "valid_loss": 3.0 - 0.1 * epoch,
            "valid_accuracy": 0.2,
            "tokens_per_sec": 1000.0,
            "seconds": 1.0,
        }
    assert sync_study(study, [record], space, "valid_loss") == 1
    assert sync_study(study, [record], space, "valid_loss") == 0
    assert [(t.state, t.user_attrs["status"]) for t in study.trials] == [
        (TrialState.FAIL, "error"),
        (TrialState.COMPLETE, "completed"),
    ]
    assert study.best_value == pytest.approx(2.7)


def epoch_row(epoch: int, loss: float) -> dict:
    return {"epoch": epoch, "valid_loss": loss, "valid_accuracy": 0.2, "tokens_per_sec": 1000.0, "seconds": 1.0}


def test_the_live_study_holds_a_trial_from_its_start_with_its_curve_and_ends_it_as_the_final_sync_would(tmp_path):
    from artune.study import LiveStudy

    space_file = tmp_path / "s.yaml"
    space_file.write_text(SPACE)
    space = load_space(space_file)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    live = LiveStudy(url, "live", space, "valid_loss", "min")
    records = {tid: TrialRecord(tid, {"lr": lr, "seed": 0}, "running") for tid, lr in [("a", 0.003), ("b", 0.01)]}
    for record in records.values():
        live.start(record)
    for epoch, loss in [(1, 3.0), (2, 2.5)]:
        records["a"].add_epoch(epoch_row(epoch, loss))
        live.report(records["a"], records["a"].epochs[epoch])

    # another process (optuna-dashboard) sees both trials RUNNING, with their knobs and a's curve so far
    seen = optuna.load_study(study_name="live", storage=url).trials
    assert [(t.state, t.params, t.user_attrs["trial_id"]) for t in seen] == [
        (TrialState.RUNNING, {"lr": 0.003}, "a"),
        (TrialState.RUNNING, {"lr": 0.01}, "b"),
    ]
    assert seen[0].intermediate_values == {1: 3.0, 2: 2.5} and seen[1].intermediate_values == {}

    # Ctrl-C: the unfinished trials wait; a resume takes them up by their trial id, as the same Optuna trials
    live.pause()
    assert {t.state for t in optuna.load_study(study_name="live", storage=url).trials} == {TrialState.WAITING}
    resumed = LiveStudy(url, "live", space, "valid_loss", "min")
    for record in records.values():
        resumed.start(record)
    records["a"].add_epoch(epoch_row(3, 2.2))
    resumed.report(records["a"], records["a"].epochs[3])
    records["a"].status = "completed"
    records["b"].status = "stopped"  # stopped before its first epoch: PRUNED, no value
    assert resumed.sync(records.values()) == 2 and resumed.sync(records.values()) == 0
    resumed.settle(records)

    final = optuna.load_study(study_name="live", storage=url).trials
    expected = frozen_trial(records["a"], space, "valid_loss")
    assert len(final) == 2
    assert (final[0].state, final[0].value, final[0].intermediate_values) == (
        expected.state,
        expected.value,
        expected.intermediate_values,
    )
    assert final[0].user_attrs == expected.user_attrs
    assert final[1].state == TrialState.PRUNED and final[1].value is None
    assert final[1].user_attrs["status"] == "stopped" and final[1].user_attrs["epochs_completed"] == 0


def test_a_killed_drivers_running_trial_is_ended_by_the_next_run_and_one_never_continued_is_pruned(tmp_path):
    from artune.study import LiveStudy

    space_file = tmp_path / "s.yaml"
    space_file.write_text(SPACE)
    space = load_space(space_file)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    killed = LiveStudy(url, "k", space, "valid_loss", "min")
    ended, orphan = TrialRecord("e", {"lr": 0.003, "seed": 0}, "running"), TrialRecord("o", {"lr": 0.01, "seed": 0})
    for record in (ended, orphan):
        killed.start(record)
        record.add_epoch(epoch_row(1, 3.0))
        killed.report(record, record.epochs[1])
    del killed  # the driver died: both stay RUNNING

    # The resume's tables saw `e` end (diverged after its first epoch); Tune never continues `o`.
    ended.add_epoch({"epoch": 2, "diverged": True, "error": "training loss became nan", "valid_loss": float("nan")})
    resumed = LiveStudy(url, "k", space, "valid_loss", "min")
    assert set(resumed.open) == {"e", "o"}
    resumed.sync([ended, orphan])
    resumed.settle({"e": ended, "o": orphan})
    trials = optuna.load_study(study_name="k", storage=url).trials
    assert [(t.user_attrs["trial_id"], t.state, t.user_attrs["status"]) for t in trials] == [
        ("e", TrialState.FAIL, "diverged"),
        ("o", TrialState.PRUNED, "running"),
    ]
    assert trials[0].intermediate_values == {1: 3.0} and trials[1].intermediate_values == {1: 3.0}


def a_study_with_an_errored_trial(tmp_path):
    """A search's study (its url and space) in which trial x started, then ended in an error: what a resume finds."""
    from artune.study import LiveStudy

    space_file = tmp_path / "s.yaml"
    space_file.write_text(SPACE)
    space = load_space(space_file)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    record = TrialRecord("x", {"lr": 0.003, "seed": 0}, "running")
    first = LiveStudy(url, "e", space, "valid_loss", "min")
    first.start(record)
    record.status, record.error = "error", "RuntimeError: boom"
    assert first.sync([record]) == 1
    return url, space, record


def test_an_errored_trial_a_resume_ran_again_that_fails_again_is_not_left_running(tmp_path):
    """--resume runs errored trials again; one that failed again stayed RUNNING in the study for ever (its end and
    the search's settling took the known (trial, error) pair for done)."""
    from artune.study import LiveStudy

    url, space, record = a_study_with_an_errored_trial(tmp_path)
    resumed = LiveStudy(url, "e", space, "valid_loss", "min")
    record.status, record.error = "running", None  # the Recorder's on_trial_start
    resumed.start(record)
    record.status, record.error = "error", "RuntimeError: boom"
    assert resumed.sync([record]) == 1 and resumed.sync([record]) == 0
    resumed.settle({"x": record})
    trials = optuna.load_study(study_name="e", storage=url).trials
    assert [(t.state, t.user_attrs["status"]) for t in trials] == [(TrialState.FAIL, "error")] * 2


@pytest.mark.parametrize("then", ["stopped", "completed"])
def test_a_trial_retried_from_an_earlier_epoch_holds_the_epochs_the_tables_keep(tmp_path, then):
    """Without checkpoints Ray retries a failed trial from epoch 1 (a resume restarts an interrupted one so too).
    A retry that reaches the attempt's last epoch takes its values' places in the same trial, as in the tables, one
    Optuna trial per artune trial. One that ended sooner (ASHA) kept the attempt's later values, which the tables
    had dropped: the attempt ends FAIL as restarted, and the retry is a trial of its own."""
    from artune.study import RESTARTED_ERROR, RESTARTED_STATUS, LiveStudy

    space_file = tmp_path / "s.yaml"
    space_file.write_text(SPACE)
    space = load_space(space_file)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    live = LiveStudy(url, "r", space, "valid_loss", "min")
    record = TrialRecord("x", {"lr": 0.003, "seed": 0}, "running")
    live.start(record)
    epochs = [(1, 3.0), (2, 2.9), (3, 2.8), (1, 3.1)] + ([(2, 2.95), (3, 2.85)] if then == "completed" else [])
    for epoch, loss in epochs:  # the attempt's three epochs, then the retry's
        record.add_epoch(epoch_row(epoch, loss))
        live.report(record, record.epochs[epoch])
    record.end(3)  # ASHA stopped the retry after its first epoch, or it trained all three
    assert record.status == then
    assert live.sync([record]) == 1 and live.sync([record]) == 0
    trials = optuna.load_study(study_name="r", storage=url).trials
    expected = frozen_trial(record, space, "valid_loss")
    if then == "completed":
        (trial,) = trials
        assert (trial.state, trial.intermediate_values, trial.value) == (
            TrialState.COMPLETE,
            {1: 3.1, 2: 2.95, 3: 2.85},
            2.85,
        )
        return
    attempt, retry = trials
    assert (attempt.state, attempt.user_attrs["status"], attempt.user_attrs["error"]) == (
        TrialState.FAIL,
        RESTARTED_STATUS,
        RESTARTED_ERROR,
    )
    assert (retry.state, retry.intermediate_values, retry.user_attrs["status"]) == (
        TrialState.PRUNED,
        expected.intermediate_values,
        "stopped",
    )


def test_an_errored_trial_left_open_by_a_killed_resume_is_not_ended_twice(tmp_path):
    """A resume ran an errored trial again (a new RUNNING trial), then its driver was killed with the tables still
    saying error: the next run's first sync ended that open trial as the old error, and its restart opened another."""
    from artune.study import LiveStudy

    url, space, record = a_study_with_an_errored_trial(tmp_path)
    killed = LiveStudy(url, "e", space, "valid_loss", "min")
    record.status = "running"
    killed.start(record)  # then the driver dies; the tables still say error
    record.status = "error"
    again = LiveStudy(url, "e", space, "valid_loss", "min")
    assert again.sync([record]) == 0  # not the open trial's end: Tune runs it again
    record.status, record.error = "running", None
    again.start(record)
    record.status, record.error = "completed", None
    record.add_epoch(epoch_row(1, 3.0))
    again.sync([record])
    trials = optuna.load_study(study_name="e", storage=url).trials
    assert [(t.state, t.user_attrs["status"]) for t in trials] == [
        (TrialState.FAIL, "error"),
        (TrialState.COMPLETE, "completed"),
    ]


def test_the_study_beside_a_search_in_a_directory_with_url_characters_is_that_directorys(tmp_path):
    """A results directory named a?b (or with % or @ in it): the URL reads back as that file, not another."""
    from sqlalchemy.engine import make_url

    from artune.study import STUDY_FILE, storage_url

    for name in ("a?b", "c%41", "x@y:z"):
        url = storage_url(tmp_path / name)
        assert make_url(url).database == str((tmp_path / name / STUDY_FILE).resolve()), url
        (tmp_path / name).mkdir()
        optuna.create_study(storage=url, study_name="s")
        assert (tmp_path / name / STUDY_FILE).exists()
