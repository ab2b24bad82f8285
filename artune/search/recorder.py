"""The Tune callback that records every result into the search's parquet tables and its Optuna study, and shows
the search's progress on the terminal."""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ray import tune

from artune.config import FIELD_NAMES
from artune.results import EPOCH_COLUMNS, TrialRecord, read_records, write_tables
from artune.search.progress import Progress
from artune.study import LiveStudy
from artune.trainable import TRIAL_INDEX, WARNINGS_KEY, trial_config

if TYPE_CHECKING:
    from artune.search.plan import Plan

ENDED = ("completed", "stopped", "diverged")  # table statuses of trials that a resumed search does not train again
EPOCH_KEYS = {*EPOCH_COLUMNS, "diverged", "error"} - {"trial_id"}  # what a trial reports of an epoch, not Tune's keys


class Recorder(tune.Callback):
    """Keeps ``results/<name>/``'s tables (rewritten at most every REFRESH_S while trials run) and the study
    (live: see ``artune.study``), prints each trial's start, epochs and warnings, and the status line.
    Tune pickles its callbacks into ``tuner.pkl``: the study's connection stays out."""

    REFRESH_S = 2.0

    def __init__(self, plan: Plan, study: Optional[LiveStudy] = None) -> None:
        self.directory, self.space, self.storage, self.name = plan.directory, plan.space, plan.storage, plan.name
        self.epochs, self.metric, self.mode = (
            plan.space.settings.epochs,
            plan.space.settings.metric,
            plan.space.settings.mode,
        )
        runs = plan.manifest.data.get("runs", [])  # the search's earlier Ray runs, as the plan read them
        self.runs = runs if plan.run_name in runs else [*runs, plan.run_name]  # an extend's run is not recorded yet
        self.records: dict[str, TrialRecord] = read_records(plan.directory)  # a resumed search carries on its tables
        self._written = 0.0
        self._study = study
        self.unfinished, self.cut_short = 0, []
        self.ended: set[str] = set()  # trials Tune reported ended (complete or error) in this run
        self.run_trials: list[str] = []  # the trials of this run, as Tune had them at its end
        self.spent: dict[str, list[float]] = {}  # the seconds of each epoch trained in this run, by trial
        s = plan.space.settings
        self.progress = Progress(s.num_samples * plan.repeats, s.metric, s.mode, plan.started, plan.time_budget_s)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_study": None}

    @property
    def study(self) -> LiveStudy:
        if self._study is None:
            self._study = LiveStudy(self.storage, self.name, self.space, self.metric, self.mode)
        return self._study

    def setup(self, **info: Any) -> None:
        self.ended, self.spent = set(), {}
        self.records = read_records(self.directory)
        # The tables are refreshed every REFRESH_S: a driver killed in between may have missed
        # results that Ray recorded. Ray's own per-trial result files fill those in.
        for run in self.runs:
            merge_ray_results(self.records, self.directory / run)
        for record in self.records.values():
            for metrics in record.epochs.values():
                self.progress.epoch(record.trial_id, metrics)

    def finish(self, budget_spent: bool) -> int:
        """After fit: how many trials were left unfinished (the search was interrupted).

        Trials Tune stopped without ending them were cut short by the time budget when it was
        spent (they are 'stopped'), otherwise by Ctrl-C (they stay unfinished for --resume).
        """
        if budget_spent:
            for record in self.cut_short:
                record.status = "stopped"
            self.cut_short = []
            self.write(force=True)
        left = self.unfinished + len(self.cut_short)
        self.progress.close(sum(self.records[tid].status in (*ENDED, "error") for tid in self.run_trials))
        if left:
            self.study.pause()  # Ctrl-C: --resume continues them
        else:
            self.study.settle(self.records)
        return left

    def write(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._written >= self.REFRESH_S:
            write_tables(self.directory, self.records.values())
            self._written = now
        if force:
            self.study.sync(self.records.values())

    def _record(self, trial: Any) -> TrialRecord:
        if trial.trial_id not in self.records:
            self.records[trial.trial_id] = new_record(trial.trial_id, trial.config)
        return self.records[trial.trial_id]

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        record = self._record(trial)
        self.spent.setdefault(trial.trial_id, [])
        if record.status in ENDED:  # a resumed trial the tables saw end ends at once (train_fn's `ended`)
            return
        record.status, record.error = "running", None  # an errored trial --resume runs again starts clean
        self.study.start(record)
        knobs = {k: record.config[k] for k in self.space.active(record.config)}
        self.progress.trial_started(trial.trial_id, knobs, after=max(record.epochs, default=0))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        record = self._record(trial)
        for line in str(result.get(WARNINGS_KEY) or "").splitlines():
            self.progress.say(
                f"[{trial.trial_id}] warning: {line.removeprefix('warning: ').removeprefix('artune: ')}", err=True
            )
        if "epoch" not in result:
            return
        metrics = epoch_metrics(result)
        record.add_epoch(metrics)
        self.study.report(record, metrics)
        self.progress.epoch(trial.trial_id, metrics)
        if "seconds" in metrics:
            self.spent.setdefault(trial.trial_id, []).append(metrics["seconds"])
        if metrics.get("diverged"):
            self.progress.say(f"[{trial.trial_id}] diverged in epoch {metrics['epoch']}: {metrics.get('error')}")
        else:
            self.progress.say(
                f"[{trial.trial_id}] epoch {metrics['epoch']}/{self.epochs}  valid_loss {metrics['valid_loss']:.4f}  "
                f"valid_acc {metrics['valid_accuracy']:.3f}  {metrics['tokens_per_sec']:,.0f} tok/s"
            )
        self.write()

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.progress.tick(trials)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ended.add(trial.trial_id)
        record = self._record(trial)
        if record.status != "diverged":
            record.status = "completed" if len(record.epochs) >= self.epochs else "stopped"
        self.write(force=True)
        self.progress.tick(trials, force=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ended.add(trial.trial_id)
        record = self._record(trial)
        record.status = "error"
        record.error = error_line(trial)
        self.progress.say(f"[{trial.trial_id}] error: {record.error}")
        self.write(force=True)
        self.progress.tick(trials, force=True)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        # Settle every status from Ray's own view: a trial that ended while the driver was down
        # (then resumed) gets no on_trial_complete, and an interrupted one none at all.
        # On Ctrl-C, Tune saves its state, then stops the running trials (TERMINATED, but with no
        # on_trial_complete): those are unfinished, and --resume continues them from that state.
        self.unfinished, self.cut_short = 0, []
        self.run_trials = [trial.trial_id for trial in trials]
        for trial in trials:
            record = self._record(trial)
            running = record.status in ("running", "pending")
            if (
                trial.status == "TERMINATED"
                and trial.trial_id not in self.ended
                and running
                and len(record.epochs) < self.epochs
            ):
                self.cut_short.append(record)  # by Ctrl-C, or by the time budget
            elif trial.status == "TERMINATED":
                if running:
                    record.status = "completed" if len(record.epochs) >= self.epochs else "stopped"
            elif trial.status == "ERROR":
                if record.status != "error":
                    record.status, record.error = "error", error_line(trial)
            else:
                self.unfinished += 1
        self.write(force=True)


def new_record(trial_id: str, config: dict[str, Any], status: str = "pending") -> TrialRecord:
    """The table record of a trial Ray configured with ``config``: every knob, as the trial trains it."""
    knobs = {k: v for k, v in config.items() if k in FIELD_NAMES or k == TRIAL_INDEX}
    full = trial_config(knobs).to_dict()
    return TrialRecord(trial_id, full, status, config_id=config_id(full))


def epoch_metrics(result: dict[str, Any]) -> dict[str, Any]:
    """What a trial reported of an epoch, without Tune's own keys."""
    return {k: result[k] for k in result if k in EPOCH_KEYS or "/" in k}


def merge_ray_results(records: dict[str, TrialRecord], tune_path: Path) -> None:
    """Add the epochs Ray wrote to each trial's result.json that the tables do not hold yet."""
    for trial_dir in sorted(tune_path.glob("*/result.json")):
        trial_id = trial_dir.parent.name
        record = records.get(trial_id)
        if record is None:  # started and reported within one table refresh before the driver died
            try:
                config = json.loads((trial_dir.parent / "params.json").read_text())
            except (OSError, json.JSONDecodeError):
                continue
            record = records[trial_id] = new_record(trial_id, config, "running")
        # The file holds every attempt of the trial in order: replayed into a record of its own, a retry's
        # epochs replace the failed attempt's there too, and only what the last attempt left is added.
        replayed = TrialRecord(trial_id, record.config)
        for line in trial_dir.read_text().splitlines():
            try:
                result = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by the kill
            if "epoch" in result:
                replayed.add_epoch(epoch_metrics(result))
        for epoch in sorted(set(replayed.epochs) - set(record.epochs)):
            record.add_epoch(replayed.epochs[epoch])


def config_id(config: dict[str, Any]) -> str:
    """Names a configuration whatever its seed, so the replicates of one config share it."""
    knobs = {k: v for k, v in sorted(config.items()) if k != "seed"}
    return hashlib.sha256(json.dumps(knobs, sort_keys=True, default=str).encode()).hexdigest()[:10]


def error_line(trial: Any) -> str:
    """One line on the trial's latest failure (see ``summarize_error``).

    Tune writes the trace to the trial's local directory first and to storage later, so the local
    file is read first.
    """
    text = ""
    if trial.error_file and Path(trial.error_file).is_file():
        text = Path(trial.error_file).read_text(errors="replace")
    return summarize_error(text or str(trial.get_error() or ""))


def summarize_error(text: str) -> str:
    """The latest failure in a Tune error file, in one line: the exception's type and message (its
    trace's last line), or for a lost actor (its node or process died) the reason Ray gives."""
    latest = re.split(r"^Failure # \d+ .*$", text, flags=re.MULTILINE)[-1]  # the file holds every failure
    lines = [line.strip() for line in latest.splitlines() if line.strip()]
    if not lines:
        return "unknown error"
    reason = next((line for line in lines if line.startswith("The actor died because")), None)
    if reason is not None:
        reason = reason.split(" Node Id")[0].rstrip(".")
        return reason if reason in lines[-1] else f"{reason} ({lines[-1]})"
    return lines[-1]
