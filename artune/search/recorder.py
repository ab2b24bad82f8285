"""The Tune callback that records every result into the search's parquet tables and its Optuna study, and shows
the search's progress on the terminal."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ray import tune

from artune.config import FIELD_NAMES
from artune.humanize import describe_os_error, root_cause
from artune.results import EPOCH_COLUMNS, TrialRecord, read_records, write_tables
from artune.search.journal import Journal, add_missing_epochs, merge_journal
from artune.search.progress import Progress
from artune.search.storage import sqlite_write_error
from artune.study import LiveStudy
from artune.trainable import TRIAL_INDEX, WARNINGS_KEY, trial_config

if TYPE_CHECKING:
    from artune.search.plan import Plan

ENDED = ("completed", "stopped", "diverged")  # table statuses of trials that a resumed search does not train again
EPOCH_KEYS = {*EPOCH_COLUMNS, "diverged", "error"} - {"trial_id"}  # what a trial reports of an epoch, not Tune's keys
# A disk that is full or read-only fails every trial alike: the search's failure, not a trial's. Denied access
# and vanished paths count where they name the search's own directory (a trial may open other files).
FULL_OR_READ_ONLY = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}
DENIED_OR_GONE = {errno.EACCES, errno.EPERM, errno.ENOENT, errno.EIO}


class Recorder(tune.Callback):
    """Keeps ``results/<name>/``'s tables (rewritten at most every REFRESH_S while trials run) and the study
    (live: see ``artune.study``), prints each trial's start, epochs and warnings, and the status line.
    Tune pickles its callbacks into ``tuner.pkl``: the study's connection stays out."""

    REFRESH_S = 2.0
    unwritten = False  # results held back by REFRESH_S (here too for one unpickled from an older tuner.pkl)

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
        self.journal = Journal(plan.directory, plan.run_name)
        self._written, self.unwritten = 0.0, False
        self._study = study
        self.unfinished, self.cut_short = 0, []
        self.ended: set[str] = set()  # trials Tune reported ended (complete or error) in this run
        self.run_trials: list[str] = []  # the trials of this run, as Tune had them at its end
        self.spent: dict[str, list[float]] = {}  # the seconds of each epoch trained in this run, by trial
        self.ended_before: set[str] = set()  # trials an earlier command ended: a resume does not train them again
        self.storage_failure: Optional[str] = None  # the search's storage failed: what, in one line
        self.storage_failed: set[str] = set()  # trials that failed only because the storage did
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
        self.storage_failure, self.storage_failed = None, set()
        for handler in logging.getLogger("ray").handlers:  # Ray's one handler: Tune's loggers propagate to it
            for earlier in [f for f in handler.filters if isinstance(f, StorageFailureLogs)]:
                handler.removeFilter(earlier)  # an earlier search's in this process (a notebook's)
            handler.addFilter(StorageFailureLogs(self))
        self.records = read_records(self.directory)
        # The tables are refreshed every REFRESH_S: a driver killed in between may have missed
        # results that Tune saved. The journal holds them (Ray's result files, for a search without one).
        merge_journal(self.records, self.directory)
        for run in self.runs:
            merge_ray_results(self.records, self.directory / run)
        for record in self.records.values():
            for metrics in record.epochs.values():
                self.progress.epoch(record.trial_id, metrics)
        self.ended_before = {trial_id for trial_id, record in self.records.items() if record.status in ENDED}

    def finish(self, budget_spent: bool) -> int:
        """After fit: how many trials were left unfinished (the search was interrupted).

        Trials Tune stopped without ending them were cut short by the time budget when it was
        spent (they are 'stopped'), otherwise by Ctrl-C (they stay unfinished for --resume).
        """
        if budget_spent:
            for record in self.cut_short:
                record.status = "stopped"
            self.cut_short = []
            self.write(force=True, in_loop=False)  # Tune's loop has ended: a failure is reported, not signalled
        left = self.unfinished + len(self.cut_short)
        self.progress.close(sum(self.records[tid].status in (*ENDED, "error") for tid in self.run_trials))
        if self.storage_failure:
            return max(left, 1)  # nothing more is written: --resume, once fixed, takes the study up by trial id
        try:
            if left:
                self.study.pause()  # Ctrl-C: --resume continues them
            else:
                self.study.settle(self.records)
        except Exception as exc:  # noqa: BLE001 - as in write: the database's errors share no useful base
            why = study_write_error(self.storage, exc)
            self.storage_fails(f"the Optuna study's database {self.storage} cannot be written ({why})", in_loop=False)
            return max(left, 1)
        return left

    def write(self, force: bool = False, in_loop: bool = True) -> None:
        """The tables (and, with ``force``, the study's ended trials). Where the storage fails, the search stops:
        the tables stay as last written (each write is a rename), and nothing more is tried."""
        if self.storage_failure:
            return
        now = time.monotonic()
        if not force and now - self._written < self.REFRESH_S:
            self.unwritten = True  # on_step_end writes it once REFRESH_S has passed, not at the next result
        else:
            try:
                write_tables(self.directory, self.records.values(), self.space.settings.workers)
            except OSError as exc:
                return self.storage_fails(
                    f"{self.directory}: the tables cannot be written ({describe_os_error(exc)})", in_loop
                )
            self._written, self.unwritten = now, False
        if force:
            try:
                self.study.sync(self.records.values())
            except Exception as exc:  # noqa: BLE001 - SQLAlchemy's and the drivers' errors share no useful base
                why = study_write_error(self.storage, exc)
                what = f"the Optuna study's database {self.storage} cannot be written ({why})"
                return self.storage_fails(what, in_loop)

    def append(self, write: Any, *line: Any) -> None:
        """A line of the journal; where the storage fails, the search stops as for the tables."""
        if self.storage_failure:
            return
        try:
            write(*line)
        except OSError as exc:
            self.storage_fails(f"{self.journal.path}: the journal cannot be written ({describe_os_error(exc)})")

    def storage_fails(self, what: str, in_loop: bool = True) -> None:
        """The search's storage failed: stop the search as Ctrl-C does (Tune saves its state, the trials stay
        unfinished for --resume), unless Tune's loop has already ended."""
        if self.storage_failure is None:
            self.storage_failure = what
            if in_loop:
                signal.raise_signal(signal.SIGINT)  # to Tune's own Ctrl-C handler, which ends fit's loop

    def _record(self, trial: Any) -> TrialRecord:
        if trial.trial_id not in self.records:
            self.records[trial.trial_id] = new_record(trial.trial_id, trial.config)
        return self.records[trial.trial_id]

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        record = self._record(trial)
        if record.status in ENDED:  # a resumed trial the tables saw end ends at once (train_fn's `ended`)
            return
        self.spent.setdefault(trial.trial_id, [])
        record.status, record.error = "running", None  # an errored trial --resume runs again starts clean
        self.append(self.journal.started, record)
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
        self.append(self.journal.epoch, trial.trial_id, metrics)  # before Tune saves the state that counts it
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
        if self.unwritten:  # (Tune's loop ends a step every 0.1 s at most)
            self.write()
        self.progress.tick(trials)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ended.add(trial.trial_id)
        self._record(trial).end(self.epochs)
        self.write(force=True)
        self.progress.tick(trials, force=True)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # A trial that failed on the search's storage: not retried (the retry would fail alike), the search stops.
        failure = storage_error(trial_error_text(trial), self.directory)
        if failure:
            self.storage_failed.add(trial.trial_id)
            self.storage_fails(f"{self.directory}: trial {trial.trial_id} could not write its checkpoint ({failure})")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        failure = storage_error(trial_error_text(trial), self.directory)
        if failure:  # its last retry failed on the storage: unfinished, for --resume once the storage is fixed
            self.storage_failed.add(trial.trial_id)
            return self.storage_fails(
                f"{self.directory}: trial {trial.trial_id} could not write its checkpoint ({failure})"
            )
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
            if trial.trial_id not in self.ended_before:  # the budget's report lists one it cut before it began
                self.spent.setdefault(trial.trial_id, [])
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
                    record.end(self.epochs)
            elif trial.status == "ERROR" and trial.trial_id in self.storage_failed:
                self.unfinished += 1  # --resume runs it again (resume_errored), once the storage is fixed
            elif trial.status == "ERROR":
                if record.status != "error":
                    record.status, record.error = "error", error_line(trial)
            else:
                self.unfinished += 1
        self.write(force=True, in_loop=False)
        self.journal.close()


def new_record(trial_id: str, config: dict[str, Any], status: str = "pending") -> TrialRecord:
    """The table record of a trial Ray configured with ``config``: every knob, as the trial trains it."""
    knobs = {k: v for k, v in config.items() if k in FIELD_NAMES or k == TRIAL_INDEX}
    full = trial_config(knobs).to_dict()
    return TrialRecord(trial_id, full, status, config_id=config_id(full))


def epoch_metrics(result: dict[str, Any]) -> dict[str, Any]:
    """What a trial reported of an epoch, without Tune's own keys."""
    return {k: result[k] for k in result if k in EPOCH_KEYS or "/" in k}


def merge_ray_results(records: dict[str, TrialRecord], tune_path: Path) -> None:
    """Add the epochs Ray wrote to each trial's result.json that the tables do not hold yet. The journal holds
    them all (``artune.search.journal``); a search begun before it had one has these files only."""
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
        add_missing_epochs(records, {trial_id: replayed})


def config_id(config: dict[str, Any]) -> str:
    """Names a configuration whatever its seed, so the replicates of one config share it."""
    knobs = {k: v for k, v in sorted(config.items()) if k != "seed"}
    return hashlib.sha256(json.dumps(knobs, sort_keys=True, default=str).encode()).hexdigest()[:10]


class StorageFailureLogs(logging.Filter):
    """Ray Tune logs each write that a full or read-only disk fails, with its traceback, and goes on: the first
    such record stops the search (the recorder's one line says it), and none reaches the terminal after it."""

    def __init__(self, recorder: Recorder) -> None:
        super().__init__()
        self.recorder = recorder

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        if STAGED_FILE_RENAMED.search(text):
            return False  # Ray Tune's sync of its staging folder raced its own save there: the next sync copies it
        if record.levelno < logging.ERROR:
            return True
        if self.recorder.storage_failure:
            return False
        failure = storage_error(text, self.recorder.directory)
        if failure is None:
            return True
        self.recorder.storage_fails(f"{self.recorder.directory}: Ray Tune could not write its state there ({failure})")
        return False


def trial_error_text(trial: Any) -> str:
    """The trial's failures as Tune recorded them. Tune writes the trace to the trial's local directory first
    and to storage later, so the local file is read first; where storage failed there may be none."""
    try:
        if trial.error_file and Path(trial.error_file).is_file():
            return Path(trial.error_file).read_text(errors="replace")
    except OSError:
        pass
    return str(trial.get_error() or "")


def error_line(trial: Any) -> str:
    """One line on the trial's latest failure (see ``summarize_error``)."""
    return summarize_error(trial_error_text(trial))


ERRNO_IN_TEXT = re.compile(r"\[Errno (\d+)\] ([^\n]*)")
# Ray Tune saves its state into a staging folder (a temporary file, then a rename) while a sync of the folder from
# its last save may still copy it in the background: the copy fails on a temporary file renamed meanwhile, and Tune
# logs the failure with its traceback (as an error at its final save, a warning before), then syncs again, whole.
# Seen in CI (Ray 2.60.0: ray/tune/execution/experiment_state.py saves before it waits on the sync in flight).
STAGED_FILE_RENAMED = re.compile(r"FileNotFoundError: .*Failed to open local file '[^']*/\.[^'/]*tmp[^'/]*'")


def storage_error(text: str, directory: Path) -> Optional[str]:
    """The storage failure in a trial's latest failure, in one line (``[Errno 28] No space left on device:
    'path'``), or None where it failed otherwise."""
    latest = re.split(r"^Failure # \d+ .*$", text, flags=re.MULTILINE)[-1]
    for match in reversed(list(ERRNO_IN_TEXT.finditer(latest))):
        code, rest = int(match.group(1)), match.group(2).strip()
        if code in FULL_OR_READ_ONLY or (code in DENIED_OR_GONE and str(directory) in rest):
            return f"[Errno {code}] {rest}"
    for code in FULL_OR_READ_ONLY:  # pyarrow's file system (Ray's checkpoint upload) names the error, not its number
        if os.strerror(code) in latest:
            line = next(line for line in latest.splitlines() if os.strerror(code) in line)
            return f"[Errno {code}] {line.strip()[:300]}"
    return None


def study_write_error(storage: str, exc: Exception) -> str:
    """Why the study's write failed: for a SQLite file, the OS's reason where its directory takes no write."""
    cause = sqlite_write_error(storage)
    return describe_os_error(cause) if cause is not None else root_cause(exc)


def summarize_error(text: str) -> str:
    """The latest failure in a Tune error file, in one line: the exception's type and message (its
    trace's last line), or for a lost actor (its node or process died) Ray's ActorDiedError and the reason it
    gives, without its advice on the usual causes. (The file's ``Failure # N`` sections as Ray 2.60.0 writes
    them: see artune/compat.py.)"""
    latest = re.split(r"^Failure # \d+ .*$", text, flags=re.MULTILINE)[-1]  # the file holds every failure
    lines = [line.strip() for line in latest.splitlines() if line.strip()]
    if not lines:
        return "unknown error"
    reason = next(
        (line for line in lines if line.startswith(("The actor died because", "The actor is dead because"))), None
    )
    if reason is not None:
        reason = reason.split(" Node Id")[0].split(" Some common causes")[0].rstrip(".")
        return f"ActorDiedError: {reason}" + ("" if reason in lines[-1] else f" ({lines[-1]})")
    return lines[-1]
