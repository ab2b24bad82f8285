"""A search seen while it runs, through the real CLI: the live Optuna study, the terminal's status and trial
lines, the trackers (--log tensorboard, --log mlflow), and a killed driver's study and warnings after --resume."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from artune.results import load
from tests._searches import Search, reap, tiny_space, tune_state, write_small_corpus

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "search_spaces" / "smoke.yaml"
# What another process (optuna-dashboard, say) reads of the study: a RUNNING trial that has a curve.
RUNNING_WITH_A_VALUE = (
    "SELECT COUNT(*) FROM trials t JOIN trial_intermediate_values v ON v.trial_id = t.trial_id "
    "WHERE t.state = 'RUNNING'"
)

pytestmark = pytest.mark.usefixtures("ray_tmpdir")  # conftest: a RAY_TMPDIR of this module's


def running_with_a_value(database: Path) -> bool:
    if not database.exists():
        return False
    try:
        connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=1)
    except sqlite3.Error:
        return False
    try:
        return connection.execute(RUNNING_WITH_A_VALUE).fetchone()[0] > 0
    except sqlite3.Error:  # the schema not made yet, or the database locked by the writer a moment
        return False
    finally:
        connection.close()


def study_trials(directory: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{directory / 'optuna.db'}").trials


@pytest.fixture(scope="module")
def live(tmp_path_factory, shakespeare_path, ray_tmpdir):
    """The smoke search with both trackers, its study looked at by this process while a trial runs."""
    results = tmp_path_factory.mktemp("live")
    env = {"MLFLOW_TRACKING_URI": ""}  # the search's own mlruns/, whatever the shell has
    search = Search(
        str(SMOKE),
        *("--results-dir", str(results), "--name", "live", "--data", str(shakespeare_path)),
        *("--log", "tensorboard", "--log", "mlflow"),
        env=env,
    )
    database = results / "live" / "optuna.db"
    # the trials held between looks (hold_at), so that a trial's running epochs cannot pass unseen however fast
    # the machine; the search fails the fixture where it ends first
    search.hold_at(lambda: running_with_a_value(database), 300, "a running trial with a value", ray_tmpdir)
    seen = running_with_a_value(database)
    search.release(ray_tmpdir)
    rc = search.finish(1200)
    return {"rc": rc, "seen": seen, "stdout": search.stdout, "stderr": search.stderr, "directory": results / "live"}


def finished(live: dict):
    assert live["rc"] == 0, (live["stdout"][-2000:], live["stderr"][-3000:])
    return load(live["directory"])


@pytest.mark.slow
def test_the_study_shows_a_running_trial_with_its_curve_while_the_search_runs_and_none_after(live):
    results = finished(live)
    assert live["seen"], "no RUNNING trial with an intermediate value was seen while the search ran"
    trials = study_trials(live["directory"], "live")
    assert not {t.state for t in trials} & {TrialState.RUNNING, TrialState.WAITING}
    ids = [t.user_attrs["trial_id"] for t in trials]
    assert sorted(ids) == sorted(results.trials["trial_id"])  # one Optuna trial per artune trial
    for trial in trials:
        epochs = results.epochs[results.epochs.trial_id == trial.user_attrs["trial_id"]]
        assert trial.intermediate_values == dict(zip(epochs["epoch"], epochs["valid_loss"]))
        state = {"completed": TrialState.COMPLETE, "stopped": TrialState.PRUNED}[trial.user_attrs["status"]]
        assert trial.state == state


@pytest.mark.slow
def test_the_terminal_shows_each_trial_start_with_its_knobs_the_status_line_and_the_next_steps(live):
    results = finished(live)
    out = live["stdout"]
    for _, row in results.trials.iterrows():
        started = re.search(rf"^\[{row['trial_id']}\] started: (.*)$", out, re.MULTILINE)
        assert started, out[-3000:]
        assert f"d_model={row['d_model']} n_layers={row['n_layers']} lr=" in started.group(1)
    # not a terminal: plain status lines, one at least as each trial ended, and the last one whole
    status = re.findall(r"^status: (\d+)/4 trials done, (\d+) running, (\d+) pending; best valid_loss .*$", out, re.M)
    assert len(status) >= 4 and status[-1] == ("4", "0", "0"), out[-3000:]
    best = results.best(1).iloc[0]
    last = [line for line in out.splitlines() if line.startswith("status: ")][-1]
    assert f"best valid_loss {best['best_valid_loss']:.4f} ({best['trial_id']})" in last
    assert f"python -m artune.sample {live['directory']}" in out
    assert f"python -m artune.results {live['directory']}" in out


@pytest.mark.slow
def test_tensorboard_holds_one_series_per_trial_with_a_point_per_epoch_and_its_knobs(live):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    results = finished(live)
    for _, row in results.trials.iterrows():
        events = EventAccumulator(str(live["directory"] / "tune" / row["trial_id"]))
        events.Reload()
        epochs = results.epochs[results.epochs.trial_id == row["trial_id"]]
        series = {e.step: e.value for e in events.Scalars("ray/tune/valid_loss")}
        assert series == pytest.approx(dict(zip(epochs["epoch"], epochs["valid_loss"])))
        start = plugin_data_pb2.HParamsPluginData.FromString(
            events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        )
        hparams = start.session_start_info.hparams
        assert hparams["lr"].number_value == pytest.approx(row["lr"])
        assert hparams["d_model"].number_value == row["d_model"]


@pytest.mark.slow
def test_mlflow_holds_one_run_per_trial_with_a_point_per_epoch_and_its_knobs(live, monkeypatch):
    from mlflow.tracking import MlflowClient

    results = finished(live)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=(live["directory"] / "mlruns").as_uri())
    runs = client.search_runs([client.get_experiment_by_name("live").experiment_id])
    by_trial = {run.info.run_name.rsplit("_", 1)[-1]: run for run in runs}
    assert len(runs) == len(by_trial) and sorted(by_trial) == sorted(results.trials["trial_id"])
    for _, row in results.trials.iterrows():
        run = by_trial[row["trial_id"]]
        epochs = results.epochs[results.epochs.trial_id == row["trial_id"]]
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "valid_loss")}
        assert history == pytest.approx(dict(zip(epochs["epoch"], epochs["valid_loss"])))
        assert float(run.data.params["lr"]) == pytest.approx(row["lr"]) and run.data.params["d_model"] == str(
            row["d_model"]
        )


# --- a killed driver, then --resume: the study it left RUNNING is ended, and the trials' warnings come through

KILL_EPOCHS = 4
KILL_SPACE = tiny_space(2, KILL_EPOCHS)


@pytest.fixture(scope="module")
def killed(tmp_path_factory, shakespeare_path, ray_tmpdir):
    """SIGKILL to the driver once Ray's saved state holds a trial two epochs in (so with a checkpoint) and the
    study a RUNNING trial with a curve; every checkpoint of the running trials then made unreadable; --resume."""
    root = tmp_path_factory.mktemp("killed")
    space = root / "kill.yaml"
    space.write_text(KILL_SPACE)
    corpus = write_small_corpus(shakespeare_path, root / "small.txt")
    common = ["--results-dir", str(root / "results"), "--name", "k", "--data", str(corpus)]
    directory = root / "results" / "k"
    env = {"TUNE_GLOBAL_CHECKPOINT_S": "0"}  # Tune's saved state written at every step: the current one
    search = Search(str(space), *common, env=env)

    def moment() -> bool:
        state = tune_state(directory)
        halfway = any(t["status"] == "RUNNING" and 2 <= t["epoch"] < KILL_EPOCHS for t in state.values())
        return halfway and running_with_a_value(directory / "optuna.db")

    search.hold_at(moment, 300, "a running trial two epochs in", ray_tmpdir)
    search.proc.kill()
    search.finish(30)
    reap(ray_tmpdir)
    facts = {"directory": directory, "state": tune_state(directory)}
    facts["at_kill"] = {t.user_attrs["trial_id"]: (t.number, t.state) for t in study_trials(directory, "k")}
    # the trials Tune continues from a checkpoint: two epochs in (its first report's may not be recorded yet)
    facts["corrupted"] = [tid for tid, t in facts["state"].items() if t["status"] == "RUNNING" and t["epoch"] >= 2]
    for trial_id in facts["corrupted"]:
        for checkpoint in (directory / "tune" / trial_id).glob("checkpoint_*/checkpoint.pt"):
            with open(checkpoint, "r+b") as handle:
                handle.truncate(checkpoint.stat().st_size // 2)
    resumed = Search("--resume", *common, env=env)
    facts["rc"] = resumed.finish(1200)
    facts["stdout"], facts["stderr"] = resumed.stdout, resumed.stderr
    reap(ray_tmpdir)
    return facts


@pytest.mark.slow
def test_a_resume_after_a_killed_driver_ends_every_trial_it_left_running_as_the_same_optuna_trial(killed):
    assert killed["rc"] == 0, (killed["stdout"][-2000:], killed["stderr"][-3000:])
    assert TrialState.RUNNING in {state for _, state in killed["at_kill"].values()}  # what the kill left
    trials = study_trials(killed["directory"], "k")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    # the same Optuna trial, by artune's trial id, with its whole curve
    assert {t.user_attrs["trial_id"]: t.number for t in trials} == {
        tid: number for tid, (number, _) in killed["at_kill"].items()
    }
    assert all(sorted(t.intermediate_values) == list(range(1, KILL_EPOCHS + 1)) for t in trials)


@pytest.mark.slow
def test_a_trials_warning_reaches_the_terminal_tagged_with_its_trial(killed):
    assert killed["rc"] == 0, killed["stderr"][-3000:]
    assert killed["corrupted"]
    for trial_id in killed["corrupted"]:
        warned = [line for line in killed["stderr"].splitlines() if line.startswith(f"[{trial_id}] warning: ")]
        assert any("no loadable checkpoint for this trial" in line for line in warned), killed["stderr"][-3000:]
    # and no column of the tables holds them
    assert "warnings" not in load(killed["directory"]).epochs.columns
