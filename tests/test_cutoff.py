"""The searcher starts no trial that the time budget would end before its first rung (artune/search/cutoff.py),
on Optuna's real searcher behind Tune's ConcurrencyLimiter, as a search builds it, on a clock the test controls."""

from __future__ import annotations

import pickle
import time

import pytest
from ray import tune
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch

from artune.search.cutoff import BudgetCutoff, set_run_deadline

DEADLINE = 1_000.0


@pytest.fixture
def deadline():
    set_run_deadline(DEADLINE)
    yield DEADLINE
    set_run_deadline(None)


def searcher(grace_period: int, now: list[float]) -> BudgetCutoff:
    optuna = OptunaSearch(space={"lr": tune.loguniform(1e-3, 1e-2)}, metric="valid_loss", mode="min", seed=0)
    cutoff = BudgetCutoff(ConcurrencyLimiter(optuna, max_concurrent=8), grace_period)
    cutoff.clock = lambda: now[0]
    return cutoff


def test_no_trial_starts_that_could_not_reach_its_first_rung(deadline):
    now = [0.0]
    cutoff = searcher(grace_period=3, now=now)
    assert cutoff.suggest("a") is not None  # no epoch seen yet: nothing to judge by
    first = {"valid_loss": 2.0, "training_iteration": 1, "time_this_iter_s": 40.0}
    cutoff.on_trial_result("a", first)  # the first epoch: start-up in it
    cutoff.on_trial_result("a", {"valid_loss": 1.8, "training_iteration": 2, "time_this_iter_s": 30.0})
    now[0] = deadline - 91.0  # three of the fastest epochs fit
    assert cutoff.suggest("b") is not None
    now[0] = deadline - 89.0  # they do not
    assert cutoff.suggest("c") == Searcher.FINISHED
    faster = {"valid_loss": 2.1, "training_iteration": 1, "time_this_iter_s": 25.0}
    cutoff.on_trial_result("b", faster)  # a faster trial: three of its epochs would fit
    assert cutoff.suggest("c") is not None


def test_without_a_budget_or_past_one_run_it_suggests_as_the_searcher_does():
    now = [10_000.0]
    cutoff = searcher(grace_period=1, now=now)
    assert cutoff.suggest("a") is not None
    cutoff.on_trial_result("a", {"valid_loss": 2.0, "training_iteration": 1, "time_this_iter_s": 30.0})
    assert cutoff.suggest("b") is not None  # no time budget
    # Tune pickles the searcher into its saved state: a resume's run has a deadline of its own, not the first's
    set_run_deadline(now[0] - 5_000.0)  # the first run's, long past
    first = searcher(grace_period=1, now=[0.0])
    first.clock = time.time
    restored = pickle.loads(pickle.dumps(first))
    set_run_deadline(now[0] + 3_600.0)
    restored.clock = lambda: now[0]
    assert restored.suggest("a") is not None
    restored.on_trial_result("a", {"valid_loss": 2.0, "training_iteration": 1, "time_this_iter_s": 30.0})
    try:
        assert restored.suggest("b") is not None
    finally:
        set_run_deadline(None)


def test_past_the_deadline_or_before_any_epoch_at_the_pace_of_trials_cut_short_no_trial_starts(deadline):
    """A budget shorter than the first epochs: the trials ended at the deadline without one, and Tune started the
    searcher's next ones in the seconds left and after (a review: 6 of 8 trials started with nothing left)."""
    now = [deadline - 100.0]
    cutoff = searcher(grace_period=1, now=now)
    assert cutoff.suggest("a") is not None and cutoff.suggest("b") is not None
    now[0] = deadline - 20.0
    cutoff.on_trial_complete("a")  # cut at its own deadline after 80 s, without an epoch
    assert cutoff.epoch_over_s == 80.0
    assert cutoff.suggest("c") == Searcher.FINISHED  # an epoch takes over 80 s; 20 are left
    now[0] = deadline - 100.0
    assert cutoff.suggest("c") is not None  # 100 s left: it might fit
    now[0] = deadline + 1.0
    fresh = searcher(grace_period=1, now=now)
    assert fresh.suggest("d") == Searcher.FINISHED  # past the deadline, whatever is known of epochs
    cutoff.on_trial_complete("b", error=True)  # an error says nothing of an epoch's length
    assert cutoff.epoch_over_s == 80.0


def test_a_searcher_saved_before_the_start_times_were_kept_restores_and_a_resume_forgets_them(deadline):
    now = [deadline - 500.0]
    cutoff = searcher(grace_period=1, now=now)
    assert cutoff.suggest("a") is not None and "a" in cutoff.started_at
    cutoff.clock = time.time  # (a lambda does not pickle)
    restored = pickle.loads(pickle.dumps(cutoff))
    assert restored.started_at == {} and restored.epoch_over_s is None
    older = pickle.loads(pickle.dumps(cutoff))
    del older.__dict__["epoch_over_s"], older.__dict__["started_at"]  # as an earlier version saved it
    again = pickle.loads(pickle.dumps(older))
    again.clock = lambda: now[0]
    assert again.suggest("b") is not None and again.started_at == {"b": now[0]}
    again.on_trial_complete("a")  # started in the earlier run: no start time here, so nothing learned
    assert again.epoch_over_s is None


def test_a_trial_stopped_on_its_epochs_result_counts_as_an_epoch_not_as_a_trial_without_one(deadline):
    """Tune hands the result a scheduler stops a trial on (ASHA's max_t, a rung's cut) to on_trial_complete only:
    it was taken for a trial that trained no epoch, its start-up and wait included (a review)."""
    now = [deadline - 300.0]
    cutoff = searcher(grace_period=1, now=now)
    assert cutoff.suggest("a") is not None
    now[0] = deadline - 170.0  # 100 s of start-up and waiting, then a 30-s epoch
    cutoff.on_trial_complete("a", {"valid_loss": 2.0, "training_iteration": 1, "time_this_iter_s": 30.0})
    assert cutoff.fastest_epoch_s == 30.0 and cutoff.epoch_over_s is None
    now[0] = deadline - 120.0
    assert cutoff.suggest("b") is not None  # four epochs would fit
