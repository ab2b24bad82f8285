"""The on-disk format of a search: ``trials.parquet``, ``epochs.parquet`` and ``manifest.json``.

The driver keeps a :class:`TrialRecord` per trial and rewrites both tables from them; ``--resume``
reads them back with :func:`read_records`. Writing is atomic (a temporary file, then ``os.replace``),
so a reader, or a search interrupted mid-write, always sees the previous complete table.
The driver writes them with pyarrow alone, without importing pandas.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from artune.config import AUTO_SWITCHES, FIELD_NAMES, FIELDS, field_type
from artune.errors import ResultsError
from artune.files import written_atomically
from artune.humanize import first_line

TRIALS_FILE = "trials.parquet"
EPOCHS_FILE = "epochs.parquet"
MANIFEST_FILE = "manifest.json"
SPACE_COPY = "space.yaml"  # the space file a search started with, kept in its directory
TUNE_DIR = "tune"  # a search's first Ray run; its k-th extension is tune-(k+1)
DEFAULT_RESULTS_DIR = "results"

# Trial statuses, as written in trials.parquet:
#   completed  ran every epoch          stopped  ended early by the scheduler (ASHA)
#   diverged   loss went NaN/inf        error    raised, after its retries
#   running / pending                   the search was interrupted before the trial ended
STATUSES = ("completed", "stopped", "diverged", "error", "running", "pending")
# The error of a trial Ray started but Tune never saved before its search stopped: --resume's searcher, restored
# from before it, drew the same configuration again under a new trial id (search/saved_state.py)
LOST_PREFIX = "lost:"  # what every version's lost trial's error starts with (the text after it has changed)
LOST_ERROR = (
    f"{LOST_PREFIX} its search stopped before Ray Tune saved the trial, so --resume sampled it again under a new id"
)
# An unfinished trial of a run whose Ray Tune state was removed (its tune/ directory deleted, say): no --resume can run
# it again, and an --extend records it so (search/saved_state.py's settle_lost_run)
LOST_STATE_ERROR = f"{LOST_PREFIX} its run's Ray Tune state was gone when the search was extended, so it never ended"

EPOCH_COLUMNS = {
    "trial_id": pa.string(),
    "epoch": pa.int64(),
    "train_loss": pa.float64(),
    "train_accuracy": pa.float64(),
    "valid_loss": pa.float64(),
    "valid_accuracy": pa.float64(),
    "tokens_seen": pa.int64(),
    "tokens_per_sec": pa.float64(),
    "lr": pa.float64(),
    "sample": pa.string(),
    "seconds": pa.float64(),
    "compiled": pa.bool_(),
    "precision_used": pa.string(),  # 'fp32' or 'bf16': what precision resolved to (null in tables written before it)
    "workers": pa.int64(),  # the data-parallel workers that trained the epoch (1: one process)
}
TRIAL_SUMMARY_COLUMNS = {
    "epochs_completed": pa.int64(),
    "last_valid_loss": pa.float64(),
    "best_valid_loss": pa.float64(),
    "last_valid_accuracy": pa.float64(),
    "best_valid_accuracy": pa.float64(),
    "tokens_per_sec": pa.float64(),
    "seconds": pa.float64(),
    "error": pa.string(),
    "workers": pa.int64(),  # data-parallel workers per trial: resources.workers
}
_ARROW = {int: pa.int64(), float: pa.float64(), bool: pa.bool_(), str: pa.string()}


def manifest_runs(manifest: dict[str, Any]) -> list[str]:
    """A search's Ray runs (directories), first to last: ``tune``, then one per ``--extend``."""
    return list(manifest.get("runs", [TUNE_DIR]))  # a manifest from before runs were recorded: its only one


def knob_type(name: str) -> pa.DataType:
    return pa.string() if name in AUTO_SWITCHES else _ARROW[field_type(name)[0]]


def knob_cell(name: str, value: Any) -> Any:
    """A knob's value as its column holds it: a true/false/'auto' switch as 'true', 'false' or 'auto'."""
    if name in AUTO_SWITCHES and isinstance(value, bool):
        return "true" if value else "false"
    return value


def knob_value(name: str, cell: Any) -> Any:
    """A knob's value back from its column (the inverse of :func:`knob_cell`)."""
    if name in AUTO_SWITCHES and cell in ("true", "false"):
        return cell == "true"
    return cell


def trials_schema() -> pa.Schema:
    # config_id groups replicates: runs of one config that differ only in their seed (null: none)
    columns = [("trial_id", pa.string()), ("status", pa.string()), ("config_id", pa.string())]
    columns += [(name, knob_type(name)) for name in FIELD_NAMES]
    columns += list(TRIAL_SUMMARY_COLUMNS.items())
    return pa.schema(columns)


@dataclass
class TrialRecord:
    """What the driver knows of one trial: its config, status, error, and reported epochs."""

    trial_id: str
    config: dict[str, Any]
    status: str = "pending"
    error: Optional[str] = None
    epochs: dict[int, dict[str, Any]] = field(default_factory=dict)
    config_id: Optional[str] = None  # shared by the replicates of one config (different seeds)

    def add_epoch(self, metrics: dict[str, Any]) -> None:
        # An epoch at or before one already recorded comes from a retry: the trial restarted from its
        # last checkpoint, or from epoch 1 where it saves none. The retry's epochs replace every later
        # one of the failed attempt, so that no curve mixes two attempts.
        epoch = int(metrics["epoch"])
        for later in [e for e in self.epochs if e >= epoch]:
            del self.epochs[later]
        self.epochs[epoch] = metrics
        if metrics.get("diverged"):
            self.status = "diverged"
            self.error = metrics.get("error")
        elif self.status == "pending":
            self.status = "running"

    def end(self, epochs: int) -> None:
        """The trial ended without an error: ``completed`` where it trained all its ``epochs``, else ``stopped`` (by
        the scheduler or the time budget); a diverged trial stays diverged."""
        if self.status != "diverged":
            self.status = "completed" if len(self.epochs) >= epochs else "stopped"

    def summary(self, workers: int = 1) -> dict[str, Any]:
        """The trial's row of trials.parquet; ``workers``: the search's, for a trial that trained no epoch."""
        rows = [self.epochs[e] for e in sorted(self.epochs) if not self.epochs[e].get("diverged")]
        valid_loss = [r["valid_loss"] for r in rows if finite_number(r.get("valid_loss"))]
        valid_acc = [r["valid_accuracy"] for r in rows if finite_number(r.get("valid_accuracy"))]
        speeds = [r["tokens_per_sec"] for r in rows if finite_number(r.get("tokens_per_sec"))]
        return {
            "epochs_completed": len(rows),
            "last_valid_loss": rows[-1]["valid_loss"] if rows else None,
            "best_valid_loss": min(valid_loss) if valid_loss else None,
            "last_valid_accuracy": rows[-1]["valid_accuracy"] if rows else None,
            "best_valid_accuracy": max(valid_acc) if valid_acc else None,
            "tokens_per_sec": sum(speeds) / len(speeds) if speeds else None,
            "seconds": sum(r.get("seconds") or 0.0 for r in rows),  # (null where a table had none)
            "error": self.error,
            "workers": (rows[-1].get("workers") or 1) if rows else workers,
        }


def finite_number(value: Any) -> bool:
    """A metric's value that counts: a finite int or float (not a bool, not NaN, not None)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def trials_table(records: Iterable[TrialRecord], workers: int = 1) -> pa.Table:
    rows = []
    for record in records:
        row = {"trial_id": record.trial_id, "status": record.status, "config_id": record.config_id}
        row.update({name: knob_cell(name, record.config.get(name)) for name in FIELD_NAMES})
        row.update(record.summary(workers))
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=trials_schema())


def epochs_table(records: Iterable[TrialRecord]) -> pa.Table:
    rows = []
    for record in records:
        for epoch in sorted(record.epochs):
            metrics = record.epochs[epoch]
            if metrics.get("diverged"):
                continue  # the trial row says it diverged; epochs.parquet holds completed epochs only
            row = {"trial_id": record.trial_id, "workers": 1}  # a one-process trial does not report it
            row.update({k: v for k, v in metrics.items() if k != "trial_id" and not (k == "workers" and v is None)})
            rows.append(row)
    columns = dict(EPOCH_COLUMNS)
    extra = sorted({k for row in rows for k in row} - set(columns))  # e.g. param_norm/... when logged
    columns.update({k: pa.float64() for k in extra})
    schema = pa.schema(list(columns.items()))
    return pa.Table.from_pylist([{k: row.get(k) for k in columns} for row in rows], schema=schema)


def write_atomic(table: pa.Table, path: Path) -> None:
    with written_atomically(path) as tmp:
        pq.write_table(table, tmp)


def write_json_atomic(data: dict[str, Any], path: Path) -> None:
    with written_atomically(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")


# One random value in both tables' schema metadata per write_tables: a reader takes only a pair that matches
WRITE_STAMP = b"artune.write"


def write_tables(directory: Path, records: Iterable[TrialRecord], workers: int = 1) -> None:
    """The two tables; ``workers``: the search's data-parallel workers a trial (resources.workers)."""
    records = list(records)
    stamp = {WRITE_STAMP: os.urandom(8).hex().encode()}
    # epochs first: a reader between the two writes sees no trial summary newer than its epochs
    write_atomic(epochs_table(records).replace_schema_metadata(stamp), directory / EPOCHS_FILE)
    write_atomic(trials_table(records, workers).replace_schema_metadata(stamp), directory / TRIALS_FILE)


def read_tables(
    directory: Path, read: Callable[[Path], pa.Table], tries: int = 20
) -> tuple[pa.Table, Optional[pa.Table]]:
    """``trials.parquet`` and ``epochs.parquet`` (None where there is none) as one ``write_tables`` left them.

    A running search rewrites both every few seconds: read around its two renames, the pair disagreed (epoch
    rows of a trial the trials table lacked, a trial's ``epochs_completed`` behind its rows). A pair whose stamps
    differ is read again, 50 ms later, up to ``tries`` times; one a killed driver left so, or tables written before
    the stamp, are taken as they are.
    """
    for attempt in range(tries):
        trials = read(directory / TRIALS_FILE)
        epochs = read(directory / EPOCHS_FILE) if (directory / EPOCHS_FILE).exists() else None
        if epochs is None or (trials.schema.metadata or {}).get(WRITE_STAMP) == (epochs.schema.metadata or {}).get(
            WRITE_STAMP
        ):
            break
        if attempt + 1 < tries:
            time.sleep(0.05)
    return trials, epochs


def read_parquet(path: Path) -> pa.Table:
    """A table read whole into memory, then parsed there. In one go: pyarrow opens a path again for its data after
    its footer, and a running search's rename between the two mixed two writes ("Couldn't deserialize thrift").
    By ``ParquetFile`` from a buffer, which starts none of Arrow's threads: those a read of a file starts aborted
    the interpreter's exit now and then ("terminate called without an active exception", exit 134;
    apache/arrow#34314), after a refused command's one line."""
    data = path.read_bytes()  # (the tables are small: a row a trial, a row an epoch)
    return pq.ParquetFile(pa.BufferReader(data)).read(use_threads=False)


def read_records(directory: Path) -> dict[str, TrialRecord]:
    """Trial records back from a previous run's tables (for ``--resume``)."""
    trials_path, epochs_path = directory / TRIALS_FILE, directory / EPOCHS_FILE
    if not trials_path.exists():
        return {}
    records: dict[str, TrialRecord] = {}
    for row in read_parquet(trials_path).to_pylist():
        # a knob added since the table was written (no column): that trial ran with its default
        config = {name: knob_value(name, row.get(name, FIELDS[name].default)) for name in FIELD_NAMES}
        records[row["trial_id"]] = TrialRecord(
            row["trial_id"],
            config,
            row["status"],
            row["error"],
            config_id=row.get("config_id"),  # absent in older tables
        )
    if epochs_path.exists():
        for row in read_parquet(epochs_path).to_pylist():
            record = records.get(row["trial_id"])
            if record is not None:
                record.epochs[int(row["epoch"])] = {k: v for k, v in row.items() if k != "trial_id"}
    return records


def check_table(path: Path, table: pa.Table, types: dict[str, pa.DataType], key: list[str]) -> None:
    """A table edited or written by another tool: its numbers as text, or a row twice, failed later in a traceback
    (a ranking's format, the curves' pivot) or counted a trial twice."""
    for name, expected in types.items():
        actual = table.schema.field(name).type if name in table.column_names else None
        numeric = pa.types.is_integer(expected) or pa.types.is_floating(expected)
        if numeric and actual is not None and not (pa.types.is_integer(actual) or pa.types.is_floating(actual)):
            if not pa.types.is_null(actual):  # a column of nulls only: none had a value yet
                raise ResultsError(f"{path}: column {name!r} holds {actual}, not numbers; is it a table artune wrote?")
    if set(key) <= set(table.column_names):
        rows = table.select(key).to_pandas()
        twice = rows[rows.duplicated(keep="first")]
        if len(twice):
            which = ", ".join(f"{k} {v}" for k, v in zip(key, twice.iloc[0]))
            raise ResultsError(f"{path}: {which} has two rows; is it a table artune wrote?")


def read_table(path: Path) -> pa.Table:
    """A table of a search's (:func:`read_parquet`), or a ResultsError naming the file."""
    try:
        return read_parquet(path)
    except (pa.ArrowException, OSError) as error:
        raise ResultsError(f"{path}: cannot read the table ({first_line(error)})") from None
