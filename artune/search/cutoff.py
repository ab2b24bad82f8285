"""No new trial that the time budget would end before its first rung: the searcher's last word near the budget.

When the search's long trials end a little before the budget (a trial stops after the last whole epoch that
fits), Tune would start the searcher's next trials in the time left, and the budget ended each before its first
epoch: rows of nothing, and start-up work in the search's last seconds. ``BudgetCutoff`` wraps the searcher and
suggests nothing once a new trial could not train ``grace_period`` epochs (ASHA's first rung) at the pace of the
fastest epoch any trial has reported (before any, at the pace of the shortest run of a trial that ended without
one: its epoch was longer), and none past the deadline; the running trials go on to their end. Tune keeps that
the searcher has finished in its saved state: a ``--resume`` of a run interrupted after that continues its
unfinished trials and samples no more (``--extend`` does).

The deadline is this driver's run's (``set_run_deadline``), not one kept in the searcher: Tune pickles the
searcher into its saved state, and a ``--resume`` runs to a deadline of its own.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional, Union

from ray.tune.search import Searcher

_run_deadline: Optional[float] = None  # a time.time(): when this run's trials must have ended


def set_run_deadline(deadline: Optional[float]) -> None:
    global _run_deadline
    _run_deadline = deadline


class BudgetCutoff(Searcher):
    """``searcher``, suggesting nothing once the budget could not hold a new trial's first ``grace_period``
    epochs."""

    clock: Callable[[], float] = staticmethod(time.time)  # what the deadline is read against (a test sets its own)

    def __init__(self, searcher: Searcher, grace_period: int) -> None:
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher = searcher
        self.grace_period = grace_period
        self.fastest_epoch_s: Optional[float] = None  # of any trial's epochs: what a new trial would need at best
        self.__setstate__({})

    def __getstate__(self) -> dict:
        # the start times stay with this run: a resume's clock would count the time the search was stopped
        return {k: v for k, v in self.__dict__.items() if k != "started_at"}

    def __setstate__(self, state: dict) -> None:
        # a searcher saved before these were kept lacks them (Tune restores the searcher from its saved state)
        self.__dict__.update({"epoch_over_s": None, "started_at": {}, **state})
        self.epoch_over_s: Optional[float]  # the shortest run of a trial that ended without an epoch: one is longer
        self.started_at: dict[str, float]  # the trials suggested that have reported no epoch, and when

    def too_late(self) -> bool:
        """Whether a trial started now would meet the deadline before its first rung."""
        if _run_deadline is None:
            return False
        now = self.clock()
        epoch_s = self.fastest_epoch_s if self.fastest_epoch_s is not None else self.epoch_over_s
        return now >= _run_deadline or (epoch_s is not None and now + self.grace_period * epoch_s > _run_deadline)

    def suggest(self, trial_id: str) -> Optional[Union[dict, str]]:
        if self.too_late():
            # the search's last word: the running trials finish, then the search ends (a None, "not now", left
            # Tune's loop waiting long past the budget once none ran: docs/experiments.md, the default search
            # against its best configuration on both cores)
            return Searcher.FINISHED
        suggested = self.searcher.suggest(trial_id)
        if isinstance(suggested, dict):
            self.started_at[trial_id] = self.clock()
        return suggested

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._epoch_seen(trial_id, result)
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        # (a result Tune's scheduler stopped the trial on, ASHA's max_t or a rung's cut, comes here only)
        self._epoch_seen(trial_id, result or {})
        started = self.started_at.pop(trial_id, None)
        if started is not None and not error:  # it ran to its deadline (or a stop) without an epoch
            ran = self.clock() - started
            self.epoch_over_s = ran if self.epoch_over_s is None else min(self.epoch_over_s, ran)
        self.searcher.on_trial_complete(trial_id, result=result, error=error)

    def _epoch_seen(self, trial_id: str, result: dict) -> None:
        seconds = result.get("time_this_iter_s")
        if isinstance(seconds, (int, float)) and seconds > 0:
            self.started_at.pop(trial_id, None)
            self.fastest_epoch_s = seconds if self.fastest_epoch_s is None else min(self.fastest_epoch_s, seconds)

    def set_search_properties(self, metric: Optional[str], mode: Optional[str], config: dict, **spec: Any) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        return self.searcher.set_max_concurrency(max_concurrent)

    def add_evaluated_point(self, *args: Any, **kwargs: Any) -> None:
        self.searcher.add_evaluated_point(*args, **kwargs)

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)

    def get_state(self) -> dict:
        return self.searcher.get_state()

    def set_state(self, state: dict) -> None:
        self.searcher.set_state(state)

    def on_pause(self, trial_id: str) -> None:
        self.searcher.on_pause(trial_id)

    def on_unpause(self, trial_id: str) -> None:
        self.searcher.on_unpause(trial_id)
