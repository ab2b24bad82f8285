"""The search's journal (``artune/search/journal.py``): every epoch a trial reports, appended before Ray Tune saves
the state a ``--resume`` continues from, so that no epoch is lost where the tables lag that state and Ray's copy of
its ``result.json`` was cut short by the kill (both seen in CI: a resumed trial without its first epochs)."""

from __future__ import annotations

import json

import pytest

from artune.results import TrialRecord, read_records, write_tables
from artune.search.journal import JOURNAL_FILE, Journal, merge_journal, replay, started_in
from tests._searches import (
    Search,
    assert_every_trial_completed_once,
    reap,
    tiny_space,
    tune_state,
)

pytestmark = pytest.mark.usefixtures("ray_tmpdir")  # conftest: a RAY_TMPDIR of this module's


def metrics(epoch: int, loss: float) -> dict:
    return {"epoch": epoch, "valid_loss": loss, "train_loss": loss + 0.1}


def test_replay_takes_each_trials_last_attempt_and_skips_a_line_cut_short(tmp_path):
    journal = Journal(tmp_path)
    journal.started(TrialRecord("a", {"lr": 0.01}, "running", config_id="c1"))
    journal.epoch("a", metrics(1, 2.0))
    journal.epoch("a", metrics(2, 1.9))
    journal.epoch("a", metrics(3, 1.8))
    journal.started(TrialRecord("a", {"lr": 0.01}, "running", config_id="c1"))  # a retry from epoch 2's checkpoint
    journal.epoch("a", metrics(3, 1.7))
    journal.started(TrialRecord("b", {"lr": 0.02}, "running", config_id="c2"))
    journal.close()
    with open(tmp_path / JOURNAL_FILE, "a") as f:
        f.write('{"trial_id": "b", "epoch": {"epo')  # the kill came inside this line's write
    resumed = Journal(tmp_path)  # the next driver's lines start on a line of their own
    resumed.epoch("a", metrics(4, 1.6))
    resumed.close()
    replayed = replay(tmp_path)
    assert sorted(replayed) == ["a", "b"]
    assert sorted(replayed["a"].epochs) == [1, 2, 3, 4]
    assert {e: m["valid_loss"] for e, m in replayed["a"].epochs.items()} == {1: 2.0, 2: 1.9, 3: 1.7, 4: 1.6}
    assert replayed["a"].config == {"lr": 0.01} and replayed["a"].config_id == "c1"
    assert replayed["b"].epochs == {} and replayed["b"].status == "running"


def test_merging_adds_what_the_tables_lack_and_keeps_what_they_hold(tmp_path):
    journal = Journal(tmp_path)
    journal.started(TrialRecord("a", {"lr": 0.01}, "running"))
    for epoch in (1, 2, 3):
        journal.epoch("a", metrics(epoch, 2.0 - epoch / 10))
    journal.started(TrialRecord("new", {"lr": 0.03}, "running"))
    journal.epoch("new", metrics(1, 2.5))
    journal.started(TrialRecord("silent", {"lr": 0.04}, "running"))  # killed before its first report
    journal.close()
    held = TrialRecord("a", {"lr": 0.01}, "running")
    held.epochs[1] = {**metrics(1, 1.9), "seconds": 4.0}  # the tables' row stays as written
    records = {"a": held}
    merge_journal(records, tmp_path)
    assert sorted(records["a"].epochs) == [1, 2, 3] and records["a"].epochs[1]["seconds"] == 4.0
    assert records["new"].status == "running" and sorted(records["new"].epochs) == [1]
    # killed before its first report, yet the live study holds it: a row, which --resume settles as it does the study's
    assert records["silent"].status == "running" and not records["silent"].epochs
    merge_journal(records, tmp_path / "elsewhere")  # no journal (a search begun before it had one): nothing added
    assert sorted(records["a"].epochs) == [1, 2, 3]


def test_the_journal_says_which_run_each_trial_started_in(tmp_path):
    """A trial killed before Ray copied its directory to the search's is still known as this run's (--resume
    settles it as lost where Tune's saved state lacks it; it stayed running in the tables for ever, seen once)."""
    first, extension = Journal(tmp_path, "tune"), Journal(tmp_path, "tune-2")
    first.started(TrialRecord("a", {"lr": 0.01}, "running"))
    extension.started(TrialRecord("b", {"lr": 0.02}, "running"))
    extension.started(TrialRecord("c", {"lr": 0.03}, "running"))
    first.close()
    extension.close()
    assert started_in(tmp_path, "tune") == {"a"} and started_in(tmp_path, "tune-2") == {"b", "c"}
    assert started_in(tmp_path / "elsewhere", "tune") == set()


def test_a_journal_left_open_is_not_pickled(tmp_path):
    import pickle

    journal = Journal(tmp_path)
    journal.epoch("a", metrics(1, 2.0))
    again = pickle.loads(pickle.dumps(journal))
    again.epoch("a", metrics(2, 1.9))
    journal.close()
    again.close()
    assert [json.loads(line)["epoch"]["epoch"] for line in (tmp_path / JOURNAL_FILE).read_text().splitlines()] == [1, 2]


SAMPLES, EPOCHS = 4, 4
SPACE = tiny_space(SAMPLES, EPOCHS, batches=100)


@pytest.mark.slow
def test_a_killed_search_whose_tables_and_ray_result_files_lost_its_epochs_resumes_with_every_one(
    tmp_path, small_corpus, ray_tmpdir
):
    """The driver SIGKILLed once Tune's saved state holds a trial two epochs in (resumed from its checkpoint, it
    will not train those again); then every running trial's rows taken from the tables (written at most every few
    seconds: they may lag that state by all of them) and every ``result.json`` emptied (Ray copies them to the
    search's directory in place: a kill inside the copy leaves them so). ``--resume`` still ends with every
    epoch of every trial, once."""
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    results, name = tmp_path / "results", "j"
    directory = results / name
    common = ["--results-dir", str(results), "--name", name, "--data", str(small_corpus)]
    search = Search(str(space), *common, env={"TUNE_GLOBAL_CHECKPOINT_S": "0"})

    def two_epochs_in() -> bool:
        return any(t["status"] == "RUNNING" and 2 <= t["epoch"] < EPOCHS for t in tune_state(directory).values())

    search.hold_at(two_epochs_in, 300, "a running trial two epochs into Tune's saved state", ray_tmpdir)
    search.proc.kill()
    search.finish(30)
    reap(ray_tmpdir)
    resumed_from = {tid: t["epoch"] for tid, t in tune_state(directory).items() if t["status"] == "RUNNING"}
    assert any(epoch >= 2 for epoch in resumed_from.values()), resumed_from

    records = read_records(directory)
    for record in records.values():
        if record.status == "running":
            record.epochs.clear()
    write_tables(directory, records.values())
    for result in (directory / "tune").glob("*/result.json"):
        result.write_text("")

    search = Search("--resume", *common)
    assert search.finish(600) == 0, search.stderr[-3000:]
    assert f"({SAMPLES} completed)" in search.stdout, search.stdout[-1000:]
    assert_every_trial_completed_once(directory, SAMPLES, EPOCHS)
    # the trials resumed from a checkpoint did not train their first epochs again: the journal gave them back
    for trial_id, epoch in resumed_from.items():
        seen = search.epochs().get(trial_id, [])
        assert seen and (epoch < 2 or seen[0] >= 2), (trial_id, epoch, seen)
