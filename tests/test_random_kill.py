"""Issue 28's "resumable from any instant": the real CLI SIGKILLed at seeded random instants of a small search, from
0.5 s in to its end (start-up, the trials, the final writes), each kill followed by the command a user would run
next (--resume, or the same command again where the kill came before the search began), then a last one run to the
end. The tables and the study must then hold what an uninterrupted run of the same search holds.

The kill instants are random and relative to the chain's own progress (a delay after the command started, or after
its next epoch line); the assertions are about the end state only, never about speed.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time

import pytest

from artune.results import MANIFEST_FILE
from tests._searches import (
    Search,
    reap,
    signal_workers,
    tables,
    tiny_space,
    wait_for_ray_to_end,
    write_small_corpus,
)
from tests.test_faults import study_trials

KILLS, SEED = 12, 28
# 16 epochs: an attempt killed by its first epoch line trains at most about one epoch per running trial (2), so
# the 12 random kills leave the search unfinished; then one kill just after its last epoch, in the final writes.
SAMPLES, EPOCHS = 4, 4
SPACE = tiny_space(SAMPLES, EPOCHS, comment="every trial runs every epoch: the counts do not depend on timing")
LOST = "lost: its search stopped before Ray Tune saved the trial"


def end_state(directory):
    """The finished trials with their epochs, and what else the tables and the study hold."""
    trials, rows = tables(directory)
    finished = trials[trials["status"] == "completed"]
    study = study_trials(directory)
    return trials, rows, finished, study


@pytest.mark.slow
def test_a_search_killed_at_random_instants_and_resumed_ends_as_an_uninterrupted_one(
    tmp_path, shakespeare_path, private_ray_tmpdir
):
    corpus = write_small_corpus(shakespeare_path, tmp_path / "small.txt")
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    results = tmp_path / "results"

    def command(name: str) -> list[str]:
        return [str(space), "--results-dir", str(results), "--name", name, "--data", str(corpus)]

    try:
        whole = Search(*command("whole"))
        started = time.monotonic()
        whole.wait_for(lambda: whole.epochs(), 300, "an epoch line")
        first_epoch_s = time.monotonic() - started
        assert whole.finish(600) == 0, whole.stderr[-3000:]
        expected = end_state(results / "whole")

        rng = random.Random(SEED)
        directory, log = results / "killed", []

        def next_command() -> Search:
            """What a user runs next: --resume, or the same command where the kill came before the search began."""
            if (directory / MANIFEST_FILE).exists():
                return Search("--resume", "--results-dir", str(results), "--name", "killed")
            return Search(*command("killed"))

        def kill(search: Search, driver_only: bool, at_the_end: bool = False) -> None:
            if search.proc.poll() is not None:  # it ended first: only the kill in the final writes may
                rc = search.finish(60)
                if at_the_end and rc == 0:
                    log[-1] += ("ended first",)  # the final writes took less than the wait before the kill
                    return
                pytest.fail(f"attempt {len(log) + 1} ended first (exit {rc}): {log}\n{search.stderr[-3000:]}")
            if driver_only:
                search.proc.kill()
            else:  # the whole process group, as a scheduler's SIGKILL after its grace, or a power cut
                os.killpg(search.proc.pid, signal.SIGKILL)
            signal_workers(private_ray_tmpdir, signal.SIGCONT)  # held below: what outlives the driver runs on
            search.finish(60)
            wait_for_ray_to_end(private_ray_tmpdir, timeout=30)

        # 12 kills, each at a random instant from 0.5 s in to 1.5 times the uninterrupted run's wait for its
        # first epoch (so about two in three fall in the start-up), or a moment after its first epoch line
        for _ in range(KILLS):
            search = next_command()
            delay, grace, driver_only = rng.uniform(0.5, 1.5 * first_epoch_s), rng.uniform(0, 0.2), rng.random() < 0.3
            started, first_epoch = time.monotonic(), None
            while search.proc.poll() is None:
                now = time.monotonic()
                if first_epoch is None and search.epochs():
                    first_epoch = now
                    # the trials held where the line came, however fast the machine: an attempt trains about an
                    # epoch a trial at most, so that the random kills leave the search unfinished
                    signal_workers(private_ray_tmpdir, signal.SIGSTOP)
                if now - started >= delay or (first_epoch and now - first_epoch >= grace):
                    break
                if now - started > 300:
                    pytest.fail(f"no epoch in 300 s: {log}\n{search.stdout[-2000:]}\n{search.stderr[-2000:]}")
                time.sleep(0.05)
            log.append(("epoch+", round(grace, 2)) if first_epoch else ("t+", round(delay, 2)))
            kill(search, driver_only)

        # a kill a moment after the search's last epoch: in the final writes of the tables, the study, the manifest
        search = next_command()
        done = set()
        if (directory / "trials.parquet").exists():
            trials, _ = tables(directory)
            done = set(trials.loc[trials.status == "completed", "trial_id"])
        search.wait_for(
            lambda: len(done | {t for t, seen in search.epochs().items() if EPOCHS in seen}) >= SAMPLES,
            300,
            "the last epoch",
        )
        time.sleep(rng.uniform(0, 0.5))
        log.append(("end",))
        kill(search, driver_only=False, at_the_end=True)

        final = next_command()
        rc = final.finish(600)
        assert rc == 0, (log, rc, final.stdout[-2000:], final.stderr[-3000:])
    finally:
        reap(private_ray_tmpdir)

    assert len(log) == KILLS + 1, log
    trials, rows, finished, study = end_state(directory)
    whole_trials, whole_rows, whole_finished, whole_study = expected
    # every trial the search samples ended completed, with one row per epoch, as in the uninterrupted run
    assert len(finished) == len(whole_finished) == SAMPLES, (log, trials[["trial_id", "status", "error"]])
    assert not rows.duplicated(["trial_id", "epoch"]).any(), log
    finished_rows = rows[rows.trial_id.isin(finished.trial_id)]
    assert len(finished_rows) == len(whole_rows) == SAMPLES * EPOCHS, log
    # a trial begun after Tune last saved its state was sampled again under a new id: recorded, saying so
    others = trials[trials["status"] != "completed"]
    assert all(str(e).startswith(LOST) for e in others["error"]), (log, others[["trial_id", "status", "error"]])
    # the study: one trial per row of trials.parquet, none left running
    assert len(study) == len(trials) and len(whole_study) == SAMPLES, log
    assert not [t for t in study if t.state.name == "RUNNING"], log
    assert sum(t.state.name == "COMPLETE" for t in study) == SAMPLES, log
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    assert manifest["finished_runs"] == ["tune"], manifest
