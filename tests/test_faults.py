"""Faults a long search must survive, caused for real: a killed or interrupted driver, a trial that
raises, a kill in the middle of a table write, an edited space file, a lost cluster node, a corrupt
checkpoint. Real Ray, real processes, real files; nothing is mocked.

Every Ray instance started here keeps its sessions under a private RAY_TMPDIR, so that (on a shared
machine) no search joins another test's cluster, and the processes a killed driver leaves behind are
found by that variable in their environment and ended by their pid.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pandas as pd
import pyarrow.parquet as pq
import pytest

from artune.results import MANIFEST_FILE, TRIALS_FILE, TrialRecord, read_records, write_tables
from artune.results.tables import LOST_STATE_ERROR
from artune.search import MAX_FAILURES, SearchError, check_saved_state
from tests._searches import (
    TINY_FIXED,
    Search,
    assert_every_trial_completed_once,
    journal_epochs,
    lagging_trials,
    newest_state_file,
    processes_with_ray_tmpdir,
    ray_epochs,
    reap,
    snapshot,
    state_trials,
    tables,
    tiny_space,
    torn_state,
    tune_state,
    wait_for_ray_to_end,
)
from tests.test_search import REPO, assert_one_error_line, cli

psutil = pytest.importorskip("psutil")
pytestmark = pytest.mark.usefixtures("ray_tmpdir")  # conftest: a RAY_TMPDIR of this module's


# Seen failing once each in two CI runs; issue 28 stays open on them (see its note).
def check_a_torn_state_was_restored(chain: dict) -> None:
    """Tune copies its state without an atomic rename: a kill inside the copy leaves it empty (seen once
    in CI). Then --resume restores Tune's staging copy (chain["kill_state"] is that copy's), or, where
    that is unreadable too, refuses with one line and there is no resumed run to check."""
    if not chain["torn_state"]:
        return
    if chain["final_rc"] == 2 and "saved state" in chain["final_stderr"]:
        pytest.skip("the kill cut short both Ray Tune's state and its staging copy; --resume refused it, as it must")
    assert "restored it from Tune's own staging copy" in chain["final_stderr"], chain["final_stderr"][-2000:]


# --- 1. the driver interrupted (SIGINT) and killed (SIGKILL), then --resume


CHAIN_SAMPLES, CHAIN_EPOCHS = 4, 4
# Ray Tune writes its experiment state at most every 10 s by default, and the chain's kill moment
# reads that state: the whole resumed run can be shorter than that (a loop here saw it end first).
# Written at every step, the saved state is the current one.
CHAIN_ENV = {"TUNE_GLOBAL_CHECKPOINT_S": "0"}
CHAIN_SPACE = tiny_space(CHAIN_SAMPLES, CHAIN_EPOCHS, batches=100, comment="every trial runs every epoch")


@pytest.fixture(scope="module")
def chain(tmp_path_factory, small_corpus, ray_tmpdir):
    """One search taken through both faults: SIGINT to the driver once three epochs were reported and
    a trial is halfway, ``--resume`` in the directory it was moved to; SIGKILL to the driver once Ray's saved state
    holds a finished trial and a running one with a checkpoint (and, if it comes within 5 s, while
    epochs.parquet lags that state), ``--resume`` again to the end.
    """
    root = tmp_path_factory.mktemp("chain")
    space = root / "chain.yaml"
    space.write_text(CHAIN_SPACE)
    results, name = root / "results", "chain"
    directory = results / name
    common = ["--results-dir", str(results), "--name", name, "--data", str(small_corpus)]
    facts: dict = {"directory": directory}

    # A: Ctrl-C, as `kill -INT` to the driver alone
    search = Search(str(space), *common, env=CHAIN_ENV)

    def sigint_moment() -> bool:
        # three epochs reported, and a trial halfway: two epochs in (so Tune holds at least its epoch-1
        # checkpoint; right after a first report it may not yet) and not finished. One trial alone may
        # report all its epochs before the other's first when a worker starts slowly.
        epochs = search.epochs().values()
        return sum(map(len, epochs)) >= 3 and any(2 <= len(seen) < CHAIN_EPOCHS for seen in epochs)

    search.hold_at(sigint_moment, 180, "three epoch lines, one of a trial halfway", ray_tmpdir)
    search.proc.send_signal(signal.SIGINT)
    search.release(ray_tmpdir)
    facts["sigint_rc"] = search.finish(120)
    facts["sigint_stderr"], facts["sigint_stdout"] = search.stderr, search.stdout
    facts["sigint_manifest"] = json.loads((directory / MANIFEST_FILE).read_text())
    facts["sigint_state"] = tune_state(directory)
    facts["sigint_tables"] = tables(directory)
    facts["left_after_sigint"] = wait_for_ray_to_end(ray_tmpdir)

    # B: the search moved to another directory (as one would to free a disk) and --resume'd there, then
    # SIGKILL of the driver mid-search. Its new trials are made from what Tune saved where it began.
    # {trial: its last epoch in the saved state} of the trials the Ctrl-C interrupted
    interrupted = facts["interrupted"] = {
        tid: t["epoch"]
        for tid, t in facts["sigint_state"].items()
        if t["status"] != "TERMINATED" and 1 <= t["epoch"] < CHAIN_EPOCHS
    }
    facts["first_results"] = results
    results = root / "moved"
    shutil.move(facts["first_results"], results)
    directory = facts["directory"] = results / name
    common = ["--results-dir", str(results), "--name", name, "--data", str(small_corpus)]
    search = Search("--resume", *common, env=CHAIN_ENV)

    def kill_moment(running_at: range = range(2, CHAIN_EPOCHS)) -> bool:
        # The resumed driver has continued every interrupted trial (the interrupted run's saved state
        # may already hold all that follows: a kill then would land before the resumed driver did anything) ...
        seen = search.epochs()
        if not all(tid in seen for tid in interrupted):
            return False
        # ... and Ray's saved state holds a finished trial and one halfway, two epochs in (so with a
        # checkpoint: the latest epoch's may not be recorded yet)
        state = tune_state(directory)
        return any(t["status"] == "TERMINATED" for t in state.values()) and any(
            t["status"] == "RUNNING" and t["epoch"] in running_at for t in state.values()
        )

    what = "a saved state with a finished trial and a running checkpointed one"
    search.hold_at(lambda: kill_moment(range(2, 3)), 240, f"{what} at epoch 2", ray_tmpdir)
    # Held where that moment begins, then for up to 5 s at the trials' own pace: the kill comes as soon as
    # epochs.parquet (rewritten at most every Recorder.REFRESH_S) lags the saved state, as it often does at the
    # moment a driver dies (held, the trials report too slowly for that); where the moment passes first, or the
    # 5 s do, the kill comes at the next one held.
    search.release(ray_tmpdir)
    deadline = time.monotonic() + 5
    while True:
        if time.monotonic() > deadline or not kill_moment():
            search.hold_at(kill_moment, 240, what, ray_tmpdir)
            break
        if lagging_trials(tune_state(directory), tables(directory)[1]):
            break
        time.sleep(0.05)
    search.proc.kill()  # the driver alone, as the OOM killer would; its Ray instance is left to fend for itself
    search.release(ray_tmpdir)
    search.finish(30)
    facts["resume1_epochs"] = search.epochs()
    facts["kill_state"] = tune_state(directory)
    facts["kill_tables"] = tables(directory)
    facts["torn_state"] = torn_state(directory)
    if facts["torn_state"]:  # the resume restores Tune's staging copy: the state it continues from
        try:
            staging = check_saved_state(directory / "tune")
            facts["kill_state"] = state_trials(json.loads((staging / newest_state_file(directory).name).read_text()))
        except SearchError:
            pass  # no whole copy either: the resume refuses (check_a_torn_state_was_restored)
    facts["left_after_sigkill"] = wait_for_ray_to_end(ray_tmpdir)

    # C: --resume to the end
    search = Search("--resume", *common, env=CHAIN_ENV)
    facts["final_rc"] = search.finish(900)
    facts["final_stdout"], facts["final_stderr"] = search.stdout, search.stderr
    facts["resume2_epochs"] = search.epochs()
    reap(ray_tmpdir)
    return facts


@pytest.mark.slow
def test_sigint_ends_the_driver_with_130_and_says_how_to_resume(chain):
    assert chain["sigint_rc"] == 130, (
        chain["sigint_rc"],
        chain["sigint_stdout"][-1000:],
        chain["sigint_stderr"][-2000:],
    )
    assert "--resume" in chain["sigint_stderr"]
    assert "finished" not in chain["sigint_manifest"]
    trials, _ = chain["sigint_tables"]
    # interrupted, not ended early (a trial may have run all its epochs before the signal)
    assert "running" in set(trials["status"]) and set(trials["status"]) <= {"running", "completed"}, trials[
        ["trial_id", "status"]
    ]


@pytest.mark.slow
def test_an_interrupted_driver_leaves_its_tables_and_no_ray_processes(chain):
    trials, epochs = chain["sigint_tables"]
    assert len(trials) >= 2 and len(epochs) >= 3 and not epochs.duplicated(["trial_id", "epoch"]).any()
    assert chain["left_after_sigint"] == 0, "Ray processes outlived the interrupted driver"
    # After a SIGKILL, Ray's own processes may outlive the driver for a while (Ray's behaviour, not
    # artune's); the fixture ends them, and --resume starts a fresh instance either way.


@pytest.mark.slow
def test_resume_after_sigint_continues_trials_from_their_checkpoints(chain):
    assert_continued_from_checkpoints(chain["interrupted"], chain["resume1_epochs"])


def assert_continued_from_checkpoints(interrupted: dict[str, int], resumed: dict[str, list[int]]) -> None:
    """Each interrupted trial ({id: its last epoch in the saved state}) went on from a checkpoint.

    Its first epoch after the resume follows a checkpoint, and none is skipped. Tune records a function
    trainable's checkpoint by a save task after it has processed the epoch's result: a stop in between
    leaves the saved state holding that result but the checkpoint before it, so the trial redoes that
    one epoch (from epoch 1 if it was its first; see the README). The stop came at a trial at least two
    epochs in, which must not restart.
    """
    assert any(last >= 2 for last in interrupted.values()), interrupted
    for trial_id, last in interrupted.items():
        seen = resumed.get(trial_id, [])
        earliest = 2 if last >= 2 else 1
        assert seen and earliest <= seen[0] <= last + 1, (trial_id, last, seen)


@pytest.mark.slow
def test_resume_after_sigkill_trains_every_trial_to_the_end(chain):
    check_a_torn_state_was_restored(chain)
    directory = chain["directory"]
    assert chain["final_rc"] == 0, chain["final_stderr"][-3000:]
    trials, rows = tables(directory)
    assert len(trials) == CHAIN_SAMPLES and trials["trial_id"].is_unique
    assert not set(trials["status"]) & {"running", "pending", "error"}, trials[["trial_id", "status"]]
    assert not rows.duplicated(["trial_id", "epoch"]).any()
    for trial_id in trials["trial_id"]:
        # the journal: over all attempts the trial trained epochs 1..E (an epoch twice at most after a kill).
        # Not Ray's result.json: a kill inside Ray's copy of it to the search's directory cut one short in CI.
        assert sorted(set(journal_epochs(directory, trial_id))) == list(range(1, CHAIN_EPOCHS + 1)), trial_id
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    assert manifest["runs"] == ["tune"] and manifest["num_samples"] == CHAIN_SAMPLES and manifest["finished"]


@pytest.mark.slow
def test_a_moved_search_resumes_where_it_is_and_writes_nothing_where_it_was(chain):
    """Every trial ran to the end (above), the ones made after the move too, and in the new directory."""
    assert not chain["first_results"].exists()
    assert len(list((chain["directory"] / "tune").glob("*/result.json"))) == CHAIN_SAMPLES


@pytest.mark.slow
def test_resume_after_sigkill_loses_no_epoch_from_the_tables(chain):
    check_a_torn_state_was_restored(chain)
    _, before = chain["kill_tables"]
    if not lagging_trials(chain["kill_state"], before):
        pytest.skip("the kill did not land while epochs.parquet lagged Ray's saved state")
    assert f"search chain: {CHAIN_SAMPLES} trials ({CHAIN_SAMPLES} completed)" in chain["final_stdout"], chain[
        "final_stdout"
    ][-600:]
    assert_every_trial_completed_once(chain["directory"], CHAIN_SAMPLES, CHAIN_EPOCHS)


@pytest.mark.slow
def test_the_manifest_lists_each_command_that_ran_the_search_once(chain):
    check_a_torn_state_was_restored(chain)
    commands = json.loads((chain["directory"] / MANIFEST_FILE).read_text())["commands"]
    assert ["--resume" in command for command in commands] == [False, True, True], commands


@pytest.mark.slow
def test_trials_finished_before_the_kill_are_not_rerun(chain):
    check_a_torn_state_was_restored(chain)
    finished = [tid for tid, t in chain["kill_state"].items() if t["status"] == "TERMINATED"]
    assert finished
    _, before = chain["kill_tables"]
    _, after = tables(chain["directory"])

    def rows(table, trial_id):
        return table[table.trial_id == trial_id].sort_values("epoch").reset_index(drop=True)

    for trial_id in finished:
        assert trial_id not in chain["resume2_epochs"], f"{trial_id} trained again after the resume"
        # the same rows, bit for bit: `seconds` and `tokens_per_sec` would differ after a rerun
        assert rows(before, trial_id).equals(rows(after, trial_id)), trial_id
        assert len(rows(after, trial_id)) == CHAIN_EPOCHS


@pytest.mark.slow
def test_trials_running_at_the_kill_continue_from_their_checkpoints(chain):
    check_a_torn_state_was_restored(chain)
    running = {
        tid: t["epoch"]
        for tid, t in chain["kill_state"].items()
        if t["status"] == "RUNNING" and 1 <= t["epoch"] < CHAIN_EPOCHS
    }
    assert_continued_from_checkpoints(running, chain["resume2_epochs"])
    # and in all, the last resume trained fewer epochs than the unfinished trials had left from scratch
    unfinished = [tid for tid, t in chain["kill_state"].items() if t["status"] != "TERMINATED"]
    total = sum(len(v) for v in chain["resume2_epochs"].values())
    assert total < (CHAIN_SAMPLES - len(chain["kill_state"]) + len(unfinished)) * CHAIN_EPOCHS


LONG_SPACE = CHAIN_SPACE.replace(f"num_samples: {CHAIN_SAMPLES}", "num_samples: 2").replace(
    f"epochs: {CHAIN_EPOCHS}", "epochs: 100000"
)  # longer than the test on any machine: only Ctrl-C and the budget end it


@pytest.mark.slow
def test_a_resumed_driver_records_its_results_its_ctrl_c_and_its_time_budget(tmp_path, small_corpus, ray_tmpdir):
    """Tune restores a run's callbacks and time budget from the first run's tuner.pkl: the resumed driver's own
    recorder and budget must be the ones in force (with the first run's, a Ctrl-C passed for the end, and the
    budget's end wrote the tables as they were before the resume)."""
    space = tmp_path / "long.yaml"
    space.write_text(LONG_SPACE)
    results = tmp_path / "results"

    def interrupt_after_two_epochs(search: Search, what: str) -> float:
        """Ctrl-C once the search has trained two epochs; the seconds that took (this machine's pace)."""
        started = time.monotonic()
        search.wait_for(lambda: sum(map(len, search.epochs().values())) >= 2, 180, what)
        took = time.monotonic() - started
        search.proc.send_signal(signal.SIGINT)
        assert search.finish(120) == 130, search.stderr[-2000:]
        wait_for_ray_to_end(ray_tmpdir)
        return took

    # A budget that holds a resume's start-up and its first epochs on this machine, however fast it is: twice what
    # the last resume took to train two. The machine's pace can change more than that between two minutes (another
    # job's load): a budgeted resume that trained nothing is tried again, on a new search, with twice the budget.
    least = 30
    for attempt in range(3):
        name = f"long{attempt}"
        directory = results / name
        common = ["--results-dir", str(results), "--name", name, "--data", str(small_corpus)]
        interrupt_after_two_epochs(Search(str(space), *common, env=CHAIN_ENV), "two epochs")
        pace = interrupt_after_two_epochs(Search("--resume", *common, env=CHAIN_ENV), "two epochs after the resume")
        assert "finished" not in json.loads((directory / MANIFEST_FILE).read_text())

        budget = max(least, math.ceil(2 * pace))
        search = Search("--resume", "--time-budget", f"{budget}s", *common, env=CHAIN_ENV)
        assert search.finish(max(600, 4 * budget)) == 0, search.stderr[-2000:]
        # the resumed run's budget ended it: by the driver's own clock (the interpreter's imports and Ray's
        # shutdown, outside it, move with the machine's load)
        timings = json.loads((directory / MANIFEST_FILE).read_text())["timings"]
        assert timings["startup_s"] + timings["tuning_s"] < budget + max(20, pace), timings
        trials, rows = tables(directory)
        assert len(trials) == 2 and set(trials["status"]) == {"stopped"}, trials[["trial_id", "status"]]
        for trial_id in trials["trial_id"]:
            assert sorted(rows.loc[rows.trial_id == trial_id, "epoch"]) == sorted(
                set(ray_epochs(directory, trial_id))
            ), trial_id
        if search.epochs():
            break
        least = 2 * budget
    assert search.epochs(), f"the budgeted resume trained nothing in {attempt + 1} tries, the last budget {budget} s"


@pytest.mark.slow
def test_a_search_whose_tune_directory_is_gone_is_not_resumed_anew_and_an_extend_records_its_trial_lost(
    tmp_path, small_corpus, ray_tmpdir
):
    """An interrupted search whose tune/ was deleted: --resume took the run for one stopped before Ray Tune began it
    and ran it anew, num_samples trials more (4 in a search of 2), the interrupted trial left running for ever; an
    --extend left it running too. The resume is refused in one line, and an extend records the trial lost."""
    space = tmp_path / "space.yaml"
    space.write_text(tiny_space(2, 1000, concurrency=1))  # longer than the test on any machine: Ctrl-C ends it
    results, name = tmp_path / "results", "gone"
    directory = results / name
    common = ["--results-dir", str(results), "--name", name, "--data", str(small_corpus)]
    search = Search(str(space), *common, env=CHAIN_ENV)
    search.wait_for(lambda: sum(map(len, search.epochs().values())) >= 1, 180, "an epoch")
    search.proc.send_signal(signal.SIGINT)
    assert search.finish(120) == 130, search.stderr[-2000:]
    wait_for_ray_to_end(ray_tmpdir)
    shutil.rmtree(directory / "tune")
    before = snapshot(directory)

    resumed = cli("--resume", *common, timeout=120)
    assert_one_error_line(resumed, "cannot be resumed", f"Ray Tune state ({directory / 'tune'}) is gone", "--extend")
    assert snapshot(directory) == before

    extended = Search("--extend", "--num-samples", "1", "--epochs", "1", *common, env=CHAIN_ENV)
    assert extended.finish(900) == 0, extended.stderr[-2000:]
    assert "1 unfinished trial(s) of run 'tune', whose Ray Tune state is gone, recorded lost" in extended.stdout
    trials, _ = tables(directory)
    assert len(trials) == 2, trials[["trial_id", "status"]]
    lost, added = trials.iloc[0], trials.iloc[1]
    assert (lost.status, lost.error) == ("error", LOST_STATE_ERROR) and added.status == "completed"
    import optuna

    study = optuna.load_study(study_name=name, storage=f"sqlite:///{directory / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]


# --- 2. a trial that raises a real error (out of memory)


ERROR_SPACE = f"""
search:
  num_samples: 2
  max_concurrent: 2
  resources: {{cpu: 1, gpu: 0}}
  epochs: 2
  sampler: grid
  seed: 0
  scheduler: none
{TINY_FIXED}
params:
  d_model: {{choice: [32, 65536]}}   # 65536: 51.5e9 parameters, 768 GiB to train with Adam's state
"""

ALL_ERROR_SPACE = f"""
search:
  num_samples: 1
  resources: {{cpu: 1, gpu: 0}}
  epochs: 1
  sampler: random
  seed: 0
  scheduler: none
{TINY_FIXED}
  d_model: 65536
params:
  lr: {{loguniform: [1.0e-3, 1.0e-2]}}
"""


def too_large_here() -> bool:
    """Whether training a d_model-65536 trial takes more than this machine's memory (the trial is then refused)."""
    import torch

    from artune.train.device import device_memory

    memory = device_memory(torch.device("cpu"))
    return memory is not None and memory[0] < 16 * 12 * 65536**2  # weights, gradients, Adam's 2 moments


@pytest.fixture(scope="module")
def errors(tmp_path_factory, small_corpus):
    if not too_large_here():
        pytest.skip("this machine has the 768 GiB a d_model-65536 trial needs; the failing trial needs it refused")
    root = tmp_path_factory.mktemp("errors")
    (root / "one.yaml").write_text(ERROR_SPACE)
    (root / "all.yaml").write_text(ALL_ERROR_SPACE)
    results = root / "results"
    one = cli(str(root / "one.yaml"), "--results-dir", str(results), "--name", "one", "--data", str(small_corpus))
    every = cli(str(root / "all.yaml"), "--results-dir", str(results), "--name", "all", "--data", str(small_corpus))
    return {"one": one, "all": every, "results": results, "all_space": root / "all.yaml", "corpus": small_corpus}


@pytest.mark.slow
def test_a_trial_that_raises_is_recorded_as_an_error_and_the_search_succeeds(errors):
    result = errors["one"]
    assert result.returncode == 0, result.stderr[-3000:]
    trials = pq.read_table(errors["results"] / "one" / TRIALS_FILE).to_pandas().set_index("d_model")
    assert sorted(trials.index) == [32, 65536]
    assert trials.loc[32, "status"] == "completed" and pd.isna(trials.loc[32, "error"])
    failed = trials.loc[65536]
    assert failed["status"] == "error" and failed["epochs_completed"] == 0
    assert (
        "ModelTooLarge: the model (d_model=65536, n_layers=1," in failed["error"] and "GiB to train" in failed["error"]
    ), failed["error"]
    assert "\n" not in failed["error"]  # the exception's line, not its traceback
    assert f"error: {failed['error']}" in result.stdout
    assert "1 completed, 1 error" in result.stdout


@pytest.mark.slow
def test_a_failing_trial_is_retried_max_failures_times(errors):
    state = tune_state(errors["results"] / "one")
    failures = sorted(t["num_failures"] for t in state.values())
    assert failures == [0, MAX_FAILURES + 1], state  # the first attempt and MAX_FAILURES retries all failed


@pytest.mark.slow
def test_a_search_in_which_every_trial_errors_exits_1(errors):
    result = errors["all"]
    assert result.returncode == 1, result.stderr[-3000:]  # (Ray logs each failed attempt's traceback on stderr)
    trials = pq.read_table(errors["results"] / "all" / TRIALS_FILE).to_pandas()
    assert list(trials["status"]) == ["error"]
    assert "ModelTooLarge: " in trials["error"][0], trials["error"][0]
    assert "search all: 1 trial (1 error)" in result.stdout


# --- 4. resuming a search whose space file was edited since it started


@pytest.mark.slow
def test_resume_of_a_search_whose_space_file_changed_is_refused_naming_the_change(errors):
    directory = errors["results"] / "all"
    before = snapshot(directory)
    space = errors["all_space"]
    space.write_text(space.read_text().replace("[1.0e-3, 1.0e-2]", "[1.0e-4, 1.0e-2]"))
    result = cli(
        "--resume",
        "--name",
        "all",
        "--results-dir",
        str(errors["results"]),
        "--data",
        str(errors["corpus"]),
        timeout=60,
    )
    line = assert_one_error_line(result, str(space), "params.lr", "--resume")
    assert "0.001" in line and "0.0001" in line, line  # the old and new bounds
    assert snapshot(directory) == before


# --- 3. the parquet export killed mid-write


WRITER = """
import os, sys
from pathlib import Path
from artune.results import TrialRecord, write_tables

directory, generation = Path(sys.argv[1]), int(sys.argv[2])
# incompressible samples make the parquet write itself (the window a kill must hit) half of each loop
samples = [os.urandom(20_000).hex() for _ in range(64)]
while True:
    # generation g: g trials of 10 epochs each
    records = [TrialRecord(f"t{i:05d}", {"lr": 0.001, "d_model": 32}, "completed", epochs={
                   e: {"epoch": e, "valid_loss": 1.0 / e, "valid_accuracy": 0.1 * e, "tokens_per_sec": 1e4,
                       "seconds": 1.5, "sample": samples[(10 * i + e) % 64]} for e in range(1, 11)})
               for i in range(generation)]
    write_tables(directory, records)
    print(generation, flush=True)
    generation += 1
"""


def test_tables_killed_mid_write_always_load_whole(tmp_path):
    rng = random.Random(7)
    generation, interrupted = 1, 0
    for kill in range(40):  # until a few kills landed inside a write
        if kill >= 6 and interrupted >= 2:
            break
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path), str(generation)], cwd=REPO, stdout=subprocess.PIPE, text=True
        )
        written = [int(proc.stdout.readline())]  # started: one whole generation written
        time.sleep(rng.uniform(0.0, 0.4))
        proc.kill()
        written += [int(line) for line in proc.stdout.read().split()]
        proc.wait()
        trials, epochs = tables(tmp_path)
        # whole tables: of the last generation reported, or of the one whose write had just finished
        assert len(trials) in (written[-1], written[-1] + 1), (len(trials), written)
        assert list(trials["trial_id"]) == [f"t{i:05d}" for i in range(len(trials))]
        assert len(epochs) in (10 * written[-1], 10 * (written[-1] + 1)), (len(epochs), written)
        assert set(epochs["epoch"]) == set(range(1, 11)) and epochs["sample"].str.len().eq(40_000).all()
        generation = written[-1] + 2
        for leftover in tmp_path.glob(".*.tmp"):  # the killed write's temporary file, never renamed into place
            interrupted += 1
            leftover.unlink()
    # a temporary file left behind shows a kill landed inside a write; without one this test proved nothing
    assert interrupted >= 1


# --- 6. a corrupt checkpoint, in a real Tune run


@pytest.fixture(scope="class")
def ray_local(ray_tmpdir, ray_env_restored):
    """An in-process instance for TestCorruptCheckpoint's Tuners, which ends with that class: a second instance in
    this process beside the cluster tests' nodes stalled the node-lost search on one core."""
    ray = pytest.importorskip("ray")
    # address="local": a new instance even if a cluster's address file is about
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield ray
    ray.shutdown()


CKPT_CONFIG = dict(
    dataset="tiny_shakespeare",
    tokenizer="character",
    seq_len=16,
    batch_size=8,
    batches_per_epoch=25,
    d_model=32,
    n_layers=1,
    n_heads=2,
    optimizer="adamw",
    lr=3e-3,
    sample_tokens=4,
    device="cpu",
    seed=5,
    epochs=4,
    is_save_models=True,
)


def corrupt_then_kill(epoch: int):
    from ray import tune

    class CorruptAndKill(tune.Callback):
        """Once Tune registered epoch ``epoch``'s checkpoint: truncate its checkpoint.pt, SIGKILL the trial's worker."""

        def __init__(self) -> None:
            self.killed, self.epochs_seen, self.truncated = False, [], None

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.epochs_seen.append(result["epoch"])

        def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
            if not self.killed and trial.last_result.get("epoch") == epoch:
                self.killed = True
                self.truncated = Path(checkpoint.path) / "checkpoint.pt"
                size = self.truncated.stat().st_size
                with open(self.truncated, "r+b") as handle:
                    handle.truncate(size // 2)
                os.kill(trial.last_result["pid"], signal.SIGKILL)

    return CorruptAndKill()


def run_with_checkpoints(tmp_path, corpus, callback, keep: int):
    from ray import tune

    from artune.trainable import train_fn

    tuner = tune.Tuner(
        tune.with_parameters(train_fn, corpus=corpus),
        param_space=CKPT_CONFIG,
        tune_config=tune.TuneConfig(num_samples=1),
        run_config=tune.RunConfig(
            name="ckpt",
            storage_path=str(tmp_path),
            verbose=0,
            callbacks=[callback],
            failure_config=tune.FailureConfig(max_failures=2),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=keep),
        ),
    )
    return tuner.fit()[0]


@pytest.fixture(scope="module")
def ckpt_corpus(small_corpus):
    from artune.data import load_corpus

    return load_corpus(str(small_corpus), "character")


@pytest.fixture(scope="module")
def uninterrupted(ckpt_corpus):
    from artune.trainable import train_fn

    return train_fn(CKPT_CONFIG, corpus=ckpt_corpus)  # the same seed, never interrupted


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
class TestCorruptCheckpoint:
    """A trial killed after its latest checkpoint was truncated, in a real Tune run on ``ray_local``."""

    def test_a_corrupt_latest_checkpoint_resumes_from_the_previous_one(self, tmp_path, ckpt_corpus, uninterrupted):
        expected = uninterrupted
        callback = corrupt_then_kill(epoch=3)
        result = run_with_checkpoints(tmp_path, ckpt_corpus, callback, keep=2)
        assert callback.killed and result.error is None
        # epoch 3's checkpoint is unreadable: the trial went back to epoch 2's and trained epoch 3 again
        assert callback.epochs_seen == [1, 2, 3, 3, 4]
        assert result.metrics["epoch"] == 4
        assert result.metrics["valid_loss"] == pytest.approx(expected[-1]["valid_loss"], abs=1e-6)
        assert result.metrics["train_loss"] == pytest.approx(expected[-1]["train_loss"], abs=1e-6)

    def test_a_corrupt_only_checkpoint_restarts_the_trial_from_epoch_1(self, tmp_path, ckpt_corpus, uninterrupted):
        expected = uninterrupted
        callback = corrupt_then_kill(epoch=3)
        result = run_with_checkpoints(tmp_path, ckpt_corpus, callback, keep=1)
        assert callback.killed and result.error is None
        assert callback.epochs_seen == [1, 2, 3, 1, 2, 3, 4]
        assert result.metrics["epoch"] == 4
        # started over with the same seed: the same run as one never interrupted
        assert result.metrics["valid_loss"] == pytest.approx(expected[-1]["valid_loss"], abs=1e-6)


# --- 5. a cluster node lost mid-search


@pytest.fixture(scope="module")
def cluster(ray_tmpdir):
    cluster_utils = pytest.importorskip("ray.cluster_utils")
    import ray

    # With another instance still up in this process (ray_local's, before it ended with its class), the search
    # below stalled once its node was lost (one core, twice in two runs)
    assert not ray.is_initialized(), "an earlier fixture left a Ray instance up in the test process"
    # A head with one CPU and one logical GPU, a worker node with one CPU; each its own GCS/raylet processes.
    cluster = cluster_utils.Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 1, "include_dashboard": False}
    )
    worker = cluster.add_node(num_cpus=1, wait=False)
    cluster.wait_for_nodes(timeout=300)  # cluster_utils waits 30 s by default: a slow machine's node may take longer
    yield cluster, worker
    cluster.shutdown()
    reap(ray_tmpdir)


@pytest.mark.slow
def test_without_address_a_search_starts_its_own_instance_even_beside_a_cluster(cluster, tmp_path, small_corpus):
    # The cluster has a GPU; this machine (and so a private local instance) has none.
    result = cli(
        str(REPO / "search_spaces" / "smoke.yaml"),
        "--gpus-per-trial",
        "1",
        "--num-samples",
        "1",
        "--epochs",
        "1",
        "--set",
        "batches_per_epoch=2",
        "--results-dir",
        str(tmp_path),
        "--name",
        "local",
        "--data",
        str(small_corpus),
        env={"RAY_ADDRESS": ""},
        timeout=180,
    )
    assert result.returncode == 2, result.stdout[-2000:]
    assert "the cluster has 0 GPUs" in result.stderr


LOST_EPOCHS = 10


@pytest.mark.slow
def test_a_node_lost_mid_search_costs_no_trial(cluster, tmp_path, small_corpus, ray_tmpdir):
    cluster, worker = cluster
    space = tmp_path / "space.yaml"
    # 10 epochs of 150 batches: the two first trials overlap for several epochs even when one starts
    # late (with 4 epochs, a CI run saw one trial finish before the other had reported its second)
    space.write_text(
        CHAIN_SPACE.replace(f"num_samples: {CHAIN_SAMPLES}", "num_samples: 3")
        .replace(f"epochs: {CHAIN_EPOCHS}\n", f"epochs: {LOST_EPOCHS}\n")
        .replace("batches_per_epoch: 100", "batches_per_epoch: 150")
    )
    search = Search(
        str(space),
        "--address",
        cluster.address,
        "--results-dir",
        str(tmp_path),
        "--name",
        "lost",
        "--data",
        str(small_corpus),
    )

    # Two trials run, one on each node; once both are mid-training with a registered checkpoint, the
    # worker node goes (a progress line comes before Tune registers that epoch's checkpoint; the next
    # one, after it). Not while a trial is starting there: Ray Tune counts the death of an actor in its
    # creation twice, and the second count finds the trial requeued and errors it (see the README).
    def two_trials_mid_training() -> bool:
        return sum(2 <= max(e) <= LOST_EPOCHS - 3 for e in search.epochs().values()) >= 2

    # held there (hold_at): a fast machine's short epochs cannot carry a trial past the moment between two looks
    search.hold_at(two_trials_mid_training, 240, f"two trials between epoch 2 and {LOST_EPOCHS - 3}", ray_tmpdir)
    cluster.remove_node(worker)
    search.release(ray_tmpdir)
    rc = search.finish(900)  # a hang guard: the rest trains on the head's one CPU
    assert rc == 0, search.stderr[-3000:]
    assert_every_trial_completed_once(tmp_path / "lost", 3, LOST_EPOCHS)
    state = tune_state(tmp_path / "lost")
    assert sum(t["num_failures"] for t in state.values()) >= 1, state  # the lost trial was retried ...
    for trial_id, seen in search.epochs().items():
        assert seen.count(1) == 1, (trial_id, seen)  # ... from its checkpoint, not from epoch 1


# A trial's error as Ray Tune 2.60 wrote it when the trial's node was removed (from a CI run)
NODE_LOST_ERROR = """Failure # 1 (occurred at 2026-11-26_13-29-29)
The actor died unexpectedly before finishing this task.
	class_name: ImplicitFunc
	actor_id: 0d9cb621a3001c6f5689464e01000000
	pid: 16324
	namespace: fe273511-36fc-4037-abda-8cc0e6e13574
	ip: 192.0.2.2
The actor died because its node has died. Node Id: 56ddcef9a56db8021cafa179db15c9c059023ca4b98f13dd8ee9442c
	the actor's node was terminated expectedly: received SIGTERM
"""


# ... and when its worker process was killed (from a review's run: SIGKILL to the trial's worker, three times)
WORKER_LOST_ERROR = """Failure # 1 (occurred at 2026-12-07_05-15-31)
The actor died unexpectedly before finishing this task.
	class_name: ImplicitFunc
	actor_id: 4ca765f5773d072a6edd561e01000000
	pid: 21155
	namespace: a8fac7c6-70a0-4054-a75b-5ba986c062aa
	ip: 127.0.0.1
The actor is dead because its worker process has died. Worker exit type: SYSTEM_ERROR Worker exit detail: Worker \
unexpectedly exits with a connection error code 2. End of file. Some common causes include: (1) the process was killed \
by the OOM killer due to high memory usage, (2) ray stop --force was called, or (3) the worker crashed unexpectedly.
"""


def test_the_error_row_of_a_lost_trial_says_its_node_died():
    from artune.search import summarize_error

    assert summarize_error(NODE_LOST_ERROR) == (
        "ActorDiedError: The actor died because its node has died (the actor's node was terminated expectedly: "
        "received SIGTERM)"
    )
    assert summarize_error(WORKER_LOST_ERROR) == (
        "ActorDiedError: The actor is dead because its worker process has died. Worker exit type: SYSTEM_ERROR "
        "Worker exit detail: Worker unexpectedly exits with a connection error code 2. End of file"
    )
    retried = (
        "Failure # 1 (occurred at x)\nTraceback\nValueError: boom\n"
        "Failure # 2 (occurred at y)\nTraceback\nMemoryError: out\n"
    )
    assert summarize_error(retried) == "MemoryError: out"  # the latest failure
    assert summarize_error("") == "unknown error"


@pytest.mark.slow
@pytest.mark.parametrize("to", ["driver", "group"])
def test_sigterm_ends_the_driver_as_ctrl_c_does_with_143_and_resume_finishes_it(
    tmp_path, small_corpus, private_ray_tmpdir, to
):
    """What batch schedulers send: Ray Tune saves its state, one line names the --resume command, exit 143
    (128 + SIGTERM), no crash dump of Ray's, the tables readable, and --resume trains the search to its end.
    To the driver's whole process group too (`kill -TERM -PGID`, Slurm's way), with the driver in a group of its own
    as a shell's job is: Ray's processes are started apart from that group (it was exit 134 and Ray's crash dump)."""
    space = tmp_path / "term.yaml"
    space.write_text(CHAIN_SPACE)
    common = ["--results-dir", str(tmp_path / "results"), "--name", "term", "--data", str(small_corpus)]
    search = Search(str(space), *common, env=CHAIN_ENV, job=to == "group")
    search.hold_at(lambda: sum(map(len, search.epochs().values())) >= 2, 180, "two epoch lines", private_ray_tmpdir)
    if to == "group":
        os.killpg(search.proc.pid, signal.SIGTERM)
    else:
        search.proc.send_signal(signal.SIGTERM)
    search.release(private_ray_tmpdir)
    rc = search.finish(120)
    assert rc == 143, (rc, search.stdout[-1000:], search.stderr[-2000:])
    resume = f"python -m artune.search --resume --name term --results-dir {tmp_path / 'results'}"  # the one that works
    assert "terminated (SIGTERM)" in search.stderr and resume in search.stderr, search.stderr[-2000:]
    assert "SIGTERM received" not in search.stderr and "Traceback" not in search.stderr, search.stderr[-2000:]
    directory = tmp_path / "results" / "term"
    assert "finished" not in json.loads((directory / MANIFEST_FILE).read_text())
    trials, epochs = tables(directory)
    assert len(epochs) >= 2 and not epochs.duplicated(["trial_id", "epoch"]).any()
    # its own RAY_TMPDIR: the module's holds what other tests' killed drivers left
    assert wait_for_ray_to_end(private_ray_tmpdir) == 0, "Ray processes outlived the terminated driver"
    try:
        resumed = Search("--resume", *common, env=CHAIN_ENV)
        assert resumed.finish(900) == 0, resumed.stderr[-2000:]
    finally:
        reap(private_ray_tmpdir)
    trials, epochs = tables(directory)
    assert len(trials) == CHAIN_SAMPLES and not epochs.duplicated(["trial_id", "epoch"]).any()
    assert len(epochs) == CHAIN_SAMPLES * CHAIN_EPOCHS
    assert [t.state.name for t in study_trials(directory)] == ["COMPLETE"] * CHAIN_SAMPLES


@pytest.mark.slow
def test_the_processes_of_a_killed_drivers_ray_instance_end_with_it(tmp_path, small_corpus, private_ray_tmpdir):
    """A SIGKILL of the driver alone (the OOM killer's way): Ray's agents and idle workers were adopted by init and
    lived about a minute. The driver's guard (artune/search/watchdog.py) reads end-of-file on its pipe at once and
    ends them: SIGTERM, SIGKILL after 3 s, at most 3 rounds, so well within the 20 s allowed here. The agents write
    their titles over their environment: found by the token there alone, they outlived the driver (3 runs in 4),
    until the guard also looked for files held open under the session directory (and so does this test)."""
    space = tmp_path / "long.yaml"
    space.write_text(LONG_SPACE)
    search = Search(str(space), "--results-dir", str(tmp_path), "--name", "k", "--data", str(small_corpus))
    try:
        search.wait_for(lambda: search.epochs(), 180, "an epoch line")
        assert len(processes_with_ray_tmpdir(private_ray_tmpdir)) >= 4  # the GCS, the raylet, agents, workers
        search.proc.kill()
        search.finish(30)
        deadline = time.monotonic() + 60  # the guard's 3 rounds of a /proc scan and 3 s of grace, on any machine
        while processes_with_ray_tmpdir(private_ray_tmpdir) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = [describe_process(p) for p in processes_with_ray_tmpdir(private_ray_tmpdir)]
    finally:
        reap(private_ray_tmpdir)
    assert not left, left


def describe_process(proc: psutil.Process) -> str:
    try:
        return f"{proc.pid} {proc.name()} (parent {proc.ppid()}, group {os.getpgid(proc.pid)})"
    except (psutil.Error, OSError):
        return f"{proc.pid} (gone)"


# --- 4. a kill during the start-up: the name stays usable


TINY_SEARCH = ["--num-samples", "1", "--epochs", "1", "--set", "batches_per_epoch=2"]


def kill_group_once(search: Search, ready: Callable[[], bool], before: Callable[[], bool], what: str) -> bool:
    """SIGKILL the search's whole process group as soon as ``ready()`` holds (looked for every 10 ms); whether
    ``before()`` still held at the kill (the kill landed in the window), asked while the group is stopped, so that
    nothing moves between the look and the kill. Fails if the search ends first."""
    deadline = time.monotonic() + 180
    while not ready():
        if search.proc.poll() is not None or time.monotonic() > deadline:
            search.wait_for(ready, 0, what)  # fails, saying why
        time.sleep(0.01)
    os.killpg(search.proc.pid, signal.SIGSTOP)
    inside = before()
    os.killpg(search.proc.pid, signal.SIGKILL)
    search.finish(30)
    return inside


def study_trials(directory: Path) -> list:
    import optuna

    return optuna.load_study(study_name=directory.name, storage=f"sqlite:///{directory / 'optuna.db'}").trials


@pytest.mark.slow
def test_a_kill_in_the_start_up_leaves_the_name_usable(tmp_path, small_corpus, private_ray_tmpdir):
    """A kill after the directory is made and before manifest.json leaves .lock and space.yaml: a new search under
    the name takes it over (it was "already holds a search"), and --resume says so in one line (it was "no search
    named"). A kill after manifest.json and before Ray Tune began the run (tuner.pkl): --resume starts the run
    anew (it was "nothing to continue")."""
    results, name = tmp_path / "results", "k1"
    directory = results / name
    command = [str(REPO / "search_spaces" / "smoke.yaml"), *TINY_SEARCH, "--data", str(small_corpus)]
    common = ["--results-dir", str(results), "--name", name]
    try:
        search = Search(*command, *common)
        in_window = kill_group_once(
            search,
            lambda: (directory / "space.yaml").exists(),
            lambda: not (directory / MANIFEST_FILE).exists(),
            "space.yaml",
        )
        assert in_window, "the kill came after manifest.json"
        assert (directory / "space.yaml").exists() and (directory / ".lock").exists()
        resumed = cli("--resume", *common, "--data", str(small_corpus), timeout=120)
        assert_one_error_line(resumed, "stopped in its start-up", "without --resume")

        search = Search(*command, *common)
        fresh = kill_group_once(
            search,
            lambda: (directory / MANIFEST_FILE).exists(),
            lambda: not (directory / "tune" / "tuner.pkl").exists(),  # before Ray Tune began the run
            "manifest.json",
        )
        assert "holds only what a start-up stopped before the search began left" in search.stderr, search.stderr
        resumed = Search("--resume", *common, "--data", str(small_corpus))
        assert resumed.finish(900) == 0, (resumed.stdout[-2000:], resumed.stderr[-3000:])
        if fresh:
            assert "stopped before Ray Tune began it: it starts anew" in resumed.stdout, resumed.stdout
    finally:
        reap(private_ray_tmpdir)
    trials, rows = tables(directory)
    assert len(trials) == 1 and set(trials["status"]) == {"completed"}, trials[["trial_id", "status"]]
    assert len(rows) == 1
    assert [t.state.name for t in study_trials(directory)] == ["COMPLETE"]


# --- 5. a resume after a kill in Ray Tune's state-save window


NODE_DIED = "The actor died because its node has died"


@pytest.mark.slow
def test_resume_settles_trials_tune_saved_as_ended_or_never_saved(tmp_path, small_corpus, private_ray_tmpdir):
    """A driver killed between Tune's saving of its state and the tables' next write leaves two kinds of trial the
    resume never runs: one Tune saved TERMINATED (ASHA stopped it) that the tables call running, which was counted
    unfinished on every resume (exit 130); one whose result.json Ray wrote but which Tune never saved (it started
    after the save: Tune samples it again under a new id), which stayed running in the tables and out of the study.
    Both are made here as such a kill leaves them, from a search interrupted for real: the newest saved state with
    its running trials marked TERMINATED (its searcher's saved state still counting them running: with every slot
    so held, the resume waited for ever), and the directory of a trial it does not list."""
    space = tmp_path / "space.yaml"
    space.write_text(CHAIN_SPACE)
    results, name = tmp_path / "results", "settle"
    directory = results / name
    common = ["--results-dir", str(results), "--name", name, "--data", str(small_corpus)]
    try:
        search = Search(str(space), *common, env=CHAIN_ENV)
        search.hold_at(lambda: sum(map(len, search.epochs().values())) >= 2, 180, "two epoch lines", private_ray_tmpdir)
        search.proc.send_signal(signal.SIGINT)
        search.release(private_ray_tmpdir)
        assert search.finish(120) == 130, search.stderr[-2000:]
        wait_for_ray_to_end(private_ray_tmpdir)

        state_file = newest_state_file(directory)
        state = json.loads(state_file.read_text())
        trials, _ = tables(directory)
        running = set(trials.loc[trials.status == "running", "trial_id"])
        # every such trial: the searcher's saved state still counts them running, as a kill between Tune's copies
        # of the two files leaves it; with all its slots so held, the resume waited for ever
        ended = []
        for i, (trial_json, runtime_json) in enumerate(state["trial_data"]):
            trial = json.loads(trial_json)
            result = directory / "tune" / trial["trial_id"] / "result.json"
            # with a result in it: Ray makes the file as the trial starts (a busy machine's trial may have none yet),
            # and the trial copied from this one below must have an epoch for the resume to take into the tables
            if trial["trial_id"] in running and result.exists() and result.read_text().strip():
                ended.append(trial["trial_id"])
                state["trial_data"][i] = [json.dumps({**trial, "status": "TERMINATED"}), runtime_json]
        if not ended:
            pytest.fail(f"no running trial with results to stop: {state_trials(state)}")
        stopped = ended[0]
        state_file.write_text(json.dumps(state))
        lost = "feedf00d"  # a trial id Tune's state does not list
        (directory / "tune" / lost).mkdir()
        for name_ in ("params.json", "result.json"):
            shutil.copyfile(directory / "tune" / stopped / name_, directory / "tune" / lost / name_)
        # and one that failed before Tune saved it (its node went with a lost cluster: seen in CI), in the tables
        failed = "deadbeef"
        (directory / "tune" / failed).mkdir()
        shutil.copyfile(directory / "tune" / stopped / "params.json", directory / "tune" / failed / "params.json")
        records = read_records(directory)
        records[failed] = TrialRecord(failed, records[stopped].config, "error", NODE_DIED)
        write_tables(directory, records.values())

        resumed = Search("--resume", *common, env=CHAIN_ENV)
        rc = resumed.finish(900)
    finally:
        reap(private_ray_tmpdir)
    assert rc == 0, (rc, resumed.stdout[-2000:], resumed.stderr[-2000:])
    trials, rows = tables(directory)
    by_id = trials.set_index("trial_id")
    assert set(by_id.loc[ended, "status"]) == {"stopped"}, by_id.loc[ended]
    assert "the resume does not wait for them" in resumed.stderr, resumed.stderr[-2000:]
    assert by_id.loc[lost, "status"] == "error" and "lost" in by_id.loc[lost, "error"], by_id.loc[lost]
    assert by_id.loc[failed, "status"] == "error", by_id.loc[failed]
    error = by_id.loc[failed, "error"]
    assert error.startswith("lost:") and f"(it had failed: {NODE_DIED})" in error, error
    assert not set(trials["status"]) & {"running", "pending"}, trials[["trial_id", "status"]]
    assert (rows.trial_id == lost).any() and not rows.duplicated(["trial_id", "epoch"]).any()
    study = study_trials(directory)
    assert len(study) == len(trials) and not [t for t in study if t.state.name == "RUNNING"]
