"""The search's journal, ``journal.jsonl``: each trial's start and every epoch it reports, one JSON line each,
appended as the recorder receives them and so before Ray Tune saves the state that ``--resume`` continues from.

The tables are rewritten every few seconds, and Ray copies its per-trial ``result.json`` into the search's
directory in place (a driver killed inside the copy leaves the file empty or cut short), so neither holds every
epoch of a killed search. The journal does: a resume adds the epochs it holds that the tables lack.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any, Iterator, Optional

from artune.results import TUNE_DIR, TrialRecord

JOURNAL_FILE = "journal.jsonl"


class Journal:
    """Appends to ``<directory>/journal.jsonl``; each line is flushed to the OS as written, so a killed driver
    leaves every line it wrote (perhaps the last one cut short, which ``replay`` skips)."""

    def __init__(self, directory: Path, run: str = TUNE_DIR) -> None:
        self.path = directory / JOURNAL_FILE
        self.run = run  # the Ray run (tune/, tune-2/ ...) the trials started in
        self._file: Optional[IO[str]] = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None}  # the recorder that holds it is pickled into Tune's tuner.pkl

    def started(self, record: TrialRecord) -> None:
        self._append(
            {"trial_id": record.trial_id, "run": self.run, "config": record.config, "config_id": record.config_id}
        )

    def epoch(self, trial_id: str, metrics: dict[str, Any]) -> None:
        self._append({"trial_id": trial_id, "epoch": metrics})

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _append(self, line: dict[str, Any]) -> None:
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held open for the search's run
            if not ends_a_line(self.path):  # a killed driver's last line, cut short: this one must not join it
                self._file.write("\n")
        self._file.write(json.dumps(line, default=plain) + "\n")
        self._file.flush()


def ends_a_line(path: Path) -> bool:
    """Whether the file is empty or its last character ends a line."""
    with open(path, "rb") as file:
        if file.seek(0, 2) == 0:
            return True
        file.seek(-1, 2)
        return file.read(1) == b"\n"


def plain(value: Any) -> Any:
    """A numpy scalar as the Python number it holds (a metric a trial reported as one)."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def lines(directory: Path) -> Iterator[dict[str, Any]]:
    """The journal's whole lines, in order (none where there is no journal): each names its ``trial_id``."""
    try:
        text = (directory / JOURNAL_FILE).read_text(encoding="utf-8")
    except FileNotFoundError:
        return
    for raw in text.splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue  # a line cut short by the kill
        if isinstance(line, dict) and "trial_id" in line:
            yield line


def replay(directory: Path) -> dict[str, TrialRecord]:
    """Each journaled trial as its journal lines leave it: the configuration it started with and its epochs,
    a retry's epochs replacing those of the attempt it retried (``TrialRecord.add_epoch``)."""
    replayed: dict[str, TrialRecord] = {}
    for line in lines(directory):
        trial_id = line["trial_id"]
        if "config" in line and trial_id not in replayed:
            replayed[trial_id] = TrialRecord(trial_id, line["config"], "running", config_id=line.get("config_id"))
        elif "epoch" in line and trial_id in replayed:
            replayed[trial_id].add_epoch(line["epoch"])
    return replayed


def started_in(directory: Path, run: str) -> set[str]:
    """The trials the journal saw start in ``run``: Ray may not have copied their directories to the search's yet."""
    return {line["trial_id"] for line in lines(directory) if "config" in line and line.get("run") == run}


def reported_in(directory: Path, run: str) -> bool:
    """Whether a trial that started in ``run`` reported an epoch: Ray Tune began that run and saved its state."""
    started: set[str] = set()
    for line in lines(directory):  # one read: a trial's start line comes before its epochs'
        if "config" in line and line.get("run") == run:
            started.add(line["trial_id"])
        elif "epoch" in line and line["trial_id"] in started:
            return True
    return False


def add_missing_epochs(records: dict[str, TrialRecord], replayed: dict[str, TrialRecord]) -> None:
    """Add to ``records`` the trials and epochs of ``replayed`` that they lack; what they hold stays as it is."""
    for trial_id, again in replayed.items():
        record = records.get(trial_id)
        if record is None:  # started (the live study holds it), perhaps reported, since the tables' last write
            record = records[trial_id] = TrialRecord(trial_id, again.config, "running", config_id=again.config_id)
        for epoch in sorted(set(again.epochs) - set(record.epochs)):
            record.add_epoch(again.epochs[epoch])


def merge_journal(records: dict[str, TrialRecord], directory: Path) -> None:
    """Add the trials and epochs of the search's journal that the tables do not hold yet."""
    add_missing_epochs(records, replay(directory))
