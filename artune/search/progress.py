"""What a running search shows on the terminal: a line as each trial starts, and a status line.

The status line counts this run's trials done, running and pending, gives the best value of the search's
metric so far and its trial, the time elapsed and, with a time budget, the time left. On an interactive
terminal it is a tqdm bar kept at the bottom, refreshed every few seconds (the other lines print above it);
where stdout is not a terminal (CI, a log file) it is a plain line every ``PLAIN_EVERY_S`` and as each trial
ends, so that a log stays readable. Tune's callbacks drive it from the driver's loop: no thread of its own.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, Optional

from artune.humanize import show_knob

TTY_EVERY_S = 2.0
PLAIN_EVERY_S = 30.0
DONE = ("TERMINATED", "ERROR")
RUNNING = ("RUNNING", "PAUSED")


class Progress:
    def __init__(
        self,
        planned: int,
        metric: str,
        mode: str,
        started: float,
        budget_s: Optional[float] = None,
        tty: Optional[bool] = None,
    ) -> None:
        """``planned``: this run's trials; ``started``: the ``time.monotonic()`` the command started."""
        self.planned, self.metric, self.mode, self.started, self.budget_s = planned, metric, mode, started, budget_s
        self.tty = sys.stdout.isatty() if tty is None else tty
        self.every = TTY_EVERY_S if self.tty else PLAIN_EVERY_S
        self.best: Optional[tuple[float, str]] = None  # (value, trial id)
        self.counts = (0, 0, planned)
        self._shown = time.monotonic()  # the first plain line comes after `every`: the plan was just printed
        self._bar: Any = None

    def say(self, line: str, err: bool = False) -> None:
        """A line above the status bar (or simply printed, without one)."""
        stream = sys.stderr if err else sys.stdout
        if self._bar is not None:
            self._bar.write(line, file=stream)
        else:
            print(line, file=stream, flush=True)

    def trial_started(self, trial_id: str, knobs: dict[str, Any], after: int = 0) -> None:
        """A trial's start, with its searched knobs; ``after``: the epoch a continued trial goes on from."""
        shown = " ".join(f"{k}={show_knob(v)}" for k, v in knobs.items())
        started = f"continues after epoch {after}" if after else "started"
        self.say(f"[{trial_id}] {started}: {shown}" if shown else f"[{trial_id}] {started}")

    def epoch(self, trial_id: str, metrics: dict[str, Any]) -> None:
        """An epoch's result: the best value so far."""
        value = metrics.get(self.metric)
        if metrics.get("diverged") or not isinstance(value, (int, float)) or not math.isfinite(value):
            return
        if self.best is None or (value < self.best[0] if self.mode == "min" else value > self.best[0]):
            self.best = (float(value), trial_id)

    def tick(self, trials: list, force: bool = False) -> None:
        """Tune's loop went round (many times a second): the status, when it is due or ``force``d."""
        now = time.monotonic()
        if not force and now - self._shown < self.every:
            return
        self._shown = now
        self._count(trials)
        if self.tty:
            self._show_bar(now)
        else:
            print(f"status: {self.line(now)}", flush=True)

    def _count(self, trials: list) -> None:
        done = sum(t.status in DONE for t in trials)
        running = sum(t.status in RUNNING for t in trials)
        self.counts = (done, running, max(self.planned - done - running, sum(t.status == "PENDING" for t in trials)))

    def line(self, now: Optional[float] = None) -> str:
        done, running, pending = self.counts
        elapsed = (now or time.monotonic()) - self.started
        parts = [f"{done}/{self.planned} trials done, {running} running, {pending} pending"]
        if self.best is not None:
            parts.append(f"best {self.metric} {self.best[0]:.4f} ({self.best[1]})")
        times = f"elapsed {_clock(elapsed)}"
        if self.budget_s:
            times += f", {_clock(max(0.0, self.budget_s - elapsed))} left"
        return "; ".join([*parts, times])

    def _show_bar(self, now: float) -> None:
        from tqdm import tqdm

        if self._bar is None:
            self._bar = tqdm(
                total=self.planned,
                bar_format="{n_fmt}/{total_fmt} trials done |{bar}| {desc}",  # desc: the rest of the status
                file=sys.stdout,
                dynamic_ncols=True,
                leave=False,
            )
        done, running, pending = self.counts
        self._bar.n = done
        best = f"best {self.metric} {self.best[0]:.4f} ({self.best[1]}); " if self.best else ""
        left = f", {_clock(max(0.0, self.budget_s - (now - self.started)))} left" if self.budget_s else ""
        self._bar.set_description_str(
            f"{running} running, {pending} pending; {best}elapsed {_clock(now - self.started)}{left}", refresh=False
        )
        self._bar.refresh()

    def close(self, done: int) -> None:
        """The search has ended with ``done`` trials of this run ended (the rest wait for ``--resume``): the bar
        goes, and the last status stays as a plain line."""
        self.counts = (done, 0, max(0, self.planned - done))
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        print(f"status: {self.line()}", flush=True)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_bar": None}  # Tune pickles the callbacks (tuner.pkl): a bar holds a stream


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"
