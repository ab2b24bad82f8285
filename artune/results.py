"""Results on disk: ``trials.parquet``, ``epochs.parquet`` and ``manifest.json`` per search.

Writing is atomic (a temporary file then ``os.replace``), so a reader, or a search interrupted
mid-write, always sees the previous complete table. ``load()`` gives the tables back as pandas
DataFrames for a notebook (``best``, ``summary``, ``curves``, ``aggregate``; ``compare()`` stacks
several searches). pandas and pyarrow only: no Ray, no torch; matplotlib only inside artune.plots.

``python -m artune.results PATH_OR_NAME`` prints the summary and writes the figures beside the tables.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional

import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:  # pandas is imported where a DataFrame is built: writing the tables needs only pyarrow
    import pandas as pd

from artune import plural
from artune.config import AUTO_SWITCHES, FIELD_NAMES, FIELDS, field_type
from artune.errors import ResultsError  # noqa: F401  (re-exported)

TRIALS_FILE = "trials.parquet"
EPOCHS_FILE = "epochs.parquet"
MANIFEST_FILE = "manifest.json"
DEFAULT_RESULTS_DIR = "results"

# Trial statuses, as written in trials.parquet:
#   completed  ran every epoch          stopped  ended early by the scheduler (ASHA)
#   diverged   loss went NaN/inf        error    raised, after its retries
#   running / pending                   the search was interrupted before the trial ended
STATUSES = ("completed", "stopped", "diverged", "error", "running", "pending")

EPOCH_COLUMNS = {
    "trial_id": pa.string(), "epoch": pa.int64(), "train_loss": pa.float64(), "train_accuracy": pa.float64(),
    "valid_loss": pa.float64(), "valid_accuracy": pa.float64(), "tokens_seen": pa.int64(),
    "tokens_per_sec": pa.float64(), "lr": pa.float64(), "sample": pa.string(), "seconds": pa.float64(),
    "compiled": pa.bool_(),
}
TRIAL_SUMMARY_COLUMNS = {
    "epochs_completed": pa.int64(), "last_valid_loss": pa.float64(), "best_valid_loss": pa.float64(),
    "last_valid_accuracy": pa.float64(), "best_valid_accuracy": pa.float64(),
    "tokens_per_sec": pa.float64(), "seconds": pa.float64(), "error": pa.string(),
}
_ARROW = {int: pa.int64(), float: pa.float64(), bool: pa.bool_(), str: pa.string()}


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

    def summary(self) -> dict[str, Any]:
        rows = [self.epochs[e] for e in sorted(self.epochs) if not self.epochs[e].get("diverged")]
        valid_loss = [r["valid_loss"] for r in rows if _finite(r.get("valid_loss"))]
        valid_acc = [r["valid_accuracy"] for r in rows if _finite(r.get("valid_accuracy"))]
        speeds = [r["tokens_per_sec"] for r in rows if _finite(r.get("tokens_per_sec"))]
        return {
            "epochs_completed": len(rows),
            "last_valid_loss": rows[-1]["valid_loss"] if rows else None,
            "best_valid_loss": min(valid_loss) if valid_loss else None,
            "last_valid_accuracy": rows[-1]["valid_accuracy"] if rows else None,
            "best_valid_accuracy": max(valid_acc) if valid_acc else None,
            "tokens_per_sec": sum(speeds) / len(speeds) if speeds else None,
            "seconds": sum(r.get("seconds", 0.0) for r in rows) if rows else None,
            "error": self.error,
        }


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def trials_table(records: Iterable[TrialRecord]) -> pa.Table:
    rows = []
    for record in records:
        row = {"trial_id": record.trial_id, "status": record.status, "config_id": record.config_id}
        row.update({name: knob_cell(name, record.config.get(name)) for name in FIELD_NAMES})
        row.update(record.summary())
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=trials_schema())


def epochs_table(records: Iterable[TrialRecord]) -> pa.Table:
    rows = []
    for record in records:
        for epoch in sorted(record.epochs):
            metrics = record.epochs[epoch]
            if metrics.get("diverged"):
                continue  # the trial row says it diverged; epochs.parquet holds completed epochs only
            row = {"trial_id": record.trial_id}
            row.update({k: v for k, v in metrics.items() if k != "trial_id"})
            rows.append(row)
    columns = dict(EPOCH_COLUMNS)
    extra = sorted({k for row in rows for k in row} - set(columns))  # e.g. param_norm/... when logged
    columns.update({k: pa.float64() for k in extra})
    schema = pa.schema(list(columns.items()))
    return pa.Table.from_pylist([{k: row.get(k) for k in columns} for row in rows], schema=schema)


def write_atomic(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def write_json_atomic(data: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def write_tables(directory: Path, records: Iterable[TrialRecord]) -> None:
    records = list(records)
    # epochs first: a reader between the two writes sees no trial summary newer than its epochs
    write_atomic(epochs_table(records), directory / EPOCHS_FILE)
    write_atomic(trials_table(records), directory / TRIALS_FILE)


def read_records(directory: Path) -> dict[str, TrialRecord]:
    """Trial records back from a previous run's tables (for ``--resume``)."""
    trials_path, epochs_path = directory / TRIALS_FILE, directory / EPOCHS_FILE
    if not trials_path.exists():
        return {}
    records: dict[str, TrialRecord] = {}
    for row in pq.read_table(trials_path).to_pylist():
        # a knob added since the table was written (no column): that trial ran with its default
        config = {name: knob_value(name, row.get(name, FIELDS[name].default)) for name in FIELD_NAMES}
        records[row["trial_id"]] = TrialRecord(
            row["trial_id"], config, row["status"], row["error"], config_id=row.get("config_id"),  # absent in older tables
        )
    if epochs_path.exists():
        for row in pq.read_table(epochs_path).to_pylist():
            record = records.get(row["trial_id"])
            if record is not None:
                record.epochs[int(row["epoch"])] = {k: v for k, v in row.items() if k != "trial_id"}
    return records


# --- reading, for notebooks


# The metrics that get better as they rise; every other (losses, seconds) gets better as it falls.
# Used only for a metric other than the search's own, whose direction manifest.json records.
_RISING = ("accuracy", "tokens_per_sec", "epochs_completed", "tokens_seen")
_NOT_METRICS = {"trial_id", "epoch", "config_id", "search", *FIELD_NAMES}


@dataclass
class SearchResults:
    """One search's tables: ``trials`` (a row per trial) and ``epochs`` (a row per trial and epoch).

    A metric argument may name an epoch metric (``valid_loss``: each trial's best value of it) or a
    trials column (``best_valid_loss``, ``last_valid_loss``, ``tokens_per_sec``); ``None`` means the
    search's own metric from manifest.json. After ``compare()`` both tables carry a ``search`` column.
    """

    path: Optional[Path]  # None for compare()'s stack of several searches
    trials: pd.DataFrame
    epochs: pd.DataFrame
    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        return self.manifest.get("name") or (self.path.name if self.path is not None else "")

    @property
    def metric(self) -> str:
        return self.manifest.get("metric", "valid_loss")

    @property
    def mode(self) -> str:
        return self.manifest.get("mode", "min")

    def active(self, knob: str) -> pd.Series:
        """Per trial, whether ``knob`` was sampled: False where its ``when`` (manifest.json's
        ``conditions``) did not hold. Such a trial's column holds the value it trained with (the
        fixed one or TrainConfig's default), which the search did not choose; plots leave it out."""
        import pandas as pd

        on = pd.Series(True, index=self.trials.index)
        for parent, allowed in self.manifest.get("conditions", {}).get(knob, {}).items():
            if parent in self.trials:
                on &= self.trials[parent].isin(allowed)
        return on

    @property
    def params(self) -> list[str]:
        """The searched knobs: manifest.json's ``params``, else the knobs that differ between configs."""
        listed = self.manifest.get("params")
        if listed is not None:
            missing = [name for name in listed if name not in self.trials]
            if missing:
                raise ResultsError(f"manifest.json lists params {missing} that {TRIALS_FILE} has no column for")
            return list(listed)
        knobs = [name for name in FIELD_NAMES if name in self.trials]
        varying = [name for name in knobs if self.trials[name].nunique(dropna=False) > 1]
        # A knob that differs inside one config (the seed of replicates) was not searched.
        groups = self.trials.assign(config_id=self._config_ids()).groupby(self._config_keys())
        return [name for name in varying if groups[name].nunique(dropna=False).max() <= 1]

    def direction(self, metric: Optional[str] = None) -> str:
        """'min' or 'max': the direction in which ``metric`` gets better."""
        metric = metric or self.metric
        base = metric.removeprefix("best_").removeprefix("last_")
        if base == self.metric:
            return self.mode
        return "max" if base.endswith(_RISING) else "min"

    def metric_column(self, metric: Optional[str] = None) -> tuple[str, pd.Series]:
        """The column name and per-trial values (aligned with ``trials``) that ``metric`` ranks by."""
        metric = metric or self.metric
        if f"best_{metric}" in self.trials:
            return f"best_{metric}", self.trials[f"best_{metric}"]
        if metric in _numeric_columns(self.trials):
            return metric, self.trials[metric]
        if metric in _numeric_columns(self.epochs):
            # a metric the trials table does not summarise (train_loss): its best over each trial's epochs
            keys = ["search", "trial_id"] if "search" in self.epochs else ["trial_id"]
            per_trial = self.epochs.groupby(keys)[metric].agg(self.direction(metric)).rename(f"best_{metric}")
            values = self.trials[keys].merge(per_trial.reset_index(), on=keys, how="left")[f"best_{metric}"]
            return f"best_{metric}", values.set_axis(self.trials.index)
        raise ResultsError(f"unknown metric {metric!r}: expected one of {', '.join(self._metric_choices())}")

    def epoch_metric(self, metric: Optional[str] = None) -> str:
        """The epochs column behind ``metric``: ``valid_loss`` for valid_loss, best_valid_loss or last_valid_loss."""
        metric = metric or self.metric
        columns = _numeric_columns(self.epochs)
        for candidate in (metric, metric.removeprefix("best_"), metric.removeprefix("last_")):
            if candidate in columns:
                return candidate
        raise ResultsError(f"no per-epoch values of {metric!r}: expected one of {', '.join(columns)}")

    def best(self, k: int = 1, metric: Optional[str] = None) -> pd.DataFrame:
        """The ``k`` best trials, best first, by the search's metric and mode (trials without a value left out)."""
        if k < 1:
            raise ValueError(f"best(k) needs k >= 1, but got k={k}")
        name, values = self.metric_column(metric)
        ranked = self.trials.assign(**{name: values}).dropna(subset=[name])
        ascending = self.direction(name) == "min"
        return ranked.sort_values(name, ascending=ascending, kind="stable").head(k).reset_index(drop=True)

    def curves(self, metric: Optional[str] = None) -> pd.DataFrame:
        """Learning curves: one row per epoch, one column per trial (per (search, trial) after compare)."""
        columns = ["search", "trial_id"] if "search" in self.epochs else "trial_id"
        return self.epochs.pivot(index="epoch", columns=columns, values=self.epoch_metric(metric))

    def status_counts(self) -> pd.Series:
        """Trials per status, in the order of ``STATUSES`` (statuses with no trial left out)."""
        counts = self.trials["status"].value_counts()
        order = [s for s in STATUSES if s in counts.index] + sorted(set(counts.index) - set(STATUSES))
        return counts.reindex(order)

    def summary(self, metric: Optional[str] = None) -> pd.DataFrame:
        """A row per trial: id, status, the searched knobs, epochs completed and its metric; best first."""
        name, values = self.metric_column(metric)
        columns = [c for c in ("search", "trial_id", "status") if c in self.trials]
        if "config_id" in self.trials and self.trials["config_id"].notna().any():
            columns.append("config_id")
        columns += [*self.params, "epochs_completed"]
        table = self.trials[columns].assign(**{name: values})
        ascending = self.direction(name) == "min"
        return table.sort_values(name, ascending=ascending, na_position="last", kind="stable").reset_index(drop=True)

    def aggregate(self, metric: Optional[str] = None) -> pd.DataFrame:
        """Replicates pooled: per config_id its knobs and the ``mean``, ``std`` and ``count`` of the metric,
        and the fewest and most epochs its runs completed (``min_epochs``, ``max_epochs``).

        ``count`` counts the runs that have a value (an errored run has none). ASHA stops each run on its
        own, so the replicates of a config may have trained for different lengths: where ``min_epochs``
        and ``max_epochs`` differ, the mean pools unlike runs. Without a ``config_id`` column (or where it
        is empty) each trial is its own config, named by its trial_id. Best mean first.
        """
        name, values = self.metric_column(metric)
        table = self.trials.assign(config_id=self._config_ids(), **{name: values})
        grouped = table.groupby(self._config_keys(), sort=False)
        stats = grouped[name].agg(["mean", "std", "count"]).join(
            grouped["epochs_completed"].agg(min_epochs="min", max_epochs="max"))
        pooled = grouped[self.params].first().join(stats).reset_index()
        ascending = self.direction(name) == "min"
        return pooled.sort_values("mean", ascending=ascending, na_position="last", kind="stable").reset_index(drop=True)

    # one implementation of each figure lives in artune.plots (matplotlib is imported only there)

    def plot_curves(self, metric: Optional[str] = None) -> Any:
        from artune.plots import learning_curves

        return learning_curves(self, metric)

    def plot_knobs(self, metric: Optional[str] = None) -> Any:
        from artune.plots import metric_vs_knobs

        return metric_vs_knobs(self, metric)

    def plot_parallel(self, metric: Optional[str] = None) -> Any:
        from artune.plots import parallel_coordinates

        return parallel_coordinates(self, metric)

    def _config_ids(self) -> pd.Series:
        ids = self.trials["trial_id"]
        if "config_id" in self.trials:
            ids = self.trials["config_id"].where(self.trials["config_id"].notna(), ids)
        return ids

    def _config_keys(self) -> list[str]:
        return ["search", "config_id"] if "search" in self.trials else ["config_id"]

    def _metric_choices(self) -> list[str]:
        return list(dict.fromkeys([*_numeric_columns(self.epochs), *_numeric_columns(self.trials)]))


def _numeric_columns(frame: pd.DataFrame) -> list[str]:
    import pandas as pd

    return [
        name for name in frame.columns
        if name not in _NOT_METRICS and pd.api.types.is_numeric_dtype(frame[name]) and not pd.api.types.is_bool_dtype(frame[name])
    ]


def resolve_results_path(path_or_name: str | os.PathLike, results_dir: str | os.PathLike = DEFAULT_RESULTS_DIR) -> Path:
    path = Path(path_or_name)
    if (path / TRIALS_FILE).exists():
        return path
    candidate = Path(results_dir) / path
    if (candidate / TRIALS_FILE).exists():
        return candidate
    where = f"{path}" if candidate == path else f"{path} or {candidate}"
    raise FileNotFoundError(f"no {TRIALS_FILE} in {where}: is it a finished or running search?")


def load(path_or_name: str | os.PathLike, results_dir: str | os.PathLike = DEFAULT_RESULTS_DIR) -> SearchResults:
    """Load a search by its directory or its name under ``results_dir``."""
    import pandas as pd

    path = resolve_results_path(path_or_name, results_dir)
    manifest_path = path / MANIFEST_FILE
    try:
        manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    except json.JSONDecodeError as error:
        raise ResultsError(f"{manifest_path}: not valid JSON ({error})") from None
    trials = _read_table(path / TRIALS_FILE)
    missing = [c for c in ("trial_id", "status") if c not in trials]
    if missing:
        raise ResultsError(f"{path / TRIALS_FILE}: no column {missing[0]!r}; is it a table artune wrote?")
    for name in FIELD_NAMES:
        kind, optional = field_type(name)
        if name in trials and kind is int and optional:
            trials[name] = trials[name].astype("Int64")  # d_ff, batches_per_epoch: none stays <NA>, not float NaN
        if name in trials and name in AUTO_SWITCHES and not pd.api.types.is_bool_dtype(trials[name]):
            # compile: True and False as the configs hold them (and as tables before 'auto' held them), 'auto' as text
            values = trials[name].map(lambda cell: knob_value(name, cell))
            trials[name] = values if values.isna().any() or (values == "auto").any() else values.astype(bool)
    epochs_path = path / EPOCHS_FILE
    epochs = _read_table(epochs_path) if epochs_path.exists() else pa.schema(list(EPOCH_COLUMNS.items())).empty_table().to_pandas()
    return SearchResults(path, trials, epochs, manifest)


def _read_table(path: Path) -> pd.DataFrame:
    try:
        return pq.read_table(path).to_pandas()
    except (pa.ArrowException, OSError) as error:
        raise ResultsError(f"{path}: cannot read the table ({error})") from None


def compare(*searches: str | os.PathLike | SearchResults, results_dir: str | os.PathLike = DEFAULT_RESULTS_DIR) -> SearchResults:
    """Several searches stacked into one SearchResults, each row tagged with a ``search`` column.

    The search is named by its manifest (else its directory). Metric and mode come from the first
    search; ``params`` is the union of every search's searched knobs.
    """
    if not searches:
        raise ResultsError("compare() needs at least one search, but got none")
    loaded = [s if isinstance(s, SearchResults) else load(s, results_dir) for s in searches]
    paths = [r.path.resolve() for r in loaded if r.path is not None]
    twice = [str(p) for p in dict.fromkeys(paths) if paths.count(p) > 1]
    if twice:
        raise ResultsError(f"compare() got the search in {twice[0]} twice")
    names: list[str] = []
    for results in loaded:
        names.append(results.name if results.name not in names else str(results.path))  # two searches of one name

    def stack(frames: list[pd.DataFrame]) -> pd.DataFrame:
        import pandas as pd

        tagged = [frame.assign(search=name)[["search", *frame.columns.drop("search", errors="ignore")]] for frame, name in zip(frames, names)]
        return pd.concat([t for t in tagged if len(t)] or tagged[:1], ignore_index=True)

    first = loaded[0]
    manifest = {
        "name": " vs ".join(names), "searches": names, "metric": first.metric, "mode": first.mode,
        "params": list(dict.fromkeys(p for results in loaded for p in results.params)),
    }
    conditions = [results.manifest.get("conditions", {}) for results in loaded]
    if all(c == conditions[0] for c in conditions):  # else each search's own: none applied to the stack
        manifest["conditions"] = conditions[0]
    return SearchResults(None, stack([r.trials for r in loaded]), stack([r.epochs for r in loaded]), manifest)


# --- `python -m artune.results`


def describe(results: SearchResults, metric: Optional[str] = None, top: int = 20) -> str:
    """The summary the CLI prints: counts by status, then the trials best first."""
    counts = results.status_counts()
    name, _ = results.metric_column(metric)
    table = results.summary(metric)
    lines = [
        f"search {results.name}: {plural(len(results.trials), 'trial')} ("
        + ", ".join(f"{n} {s}" for s, n in counts.items()) + f"), best first by {name} ({results.direction(name)})",
        table.head(top).to_string(index=False, float_format=lambda x: f"{x:.4g}"),
    ]
    if len(table) > top:
        lines.append(f"... {len(table) - top} more trials (--top {len(table)} shows every one)")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    import sys

    from artune import ArgumentParser

    parser = ArgumentParser(
        prog="python -m artune.results",
        description="Summarise a search and write learning_curves.png, metric_vs_knobs.png and "
        "parallel_coordinates.png beside its parquet tables.",
    )
    parser.add_argument("search", metavar="PATH_OR_NAME", help="a results directory, or a search name under --results-dir")
    parser.add_argument("--results-dir", default=DEFAULT_RESULTS_DIR, help=f"where searches live (default: {DEFAULT_RESULTS_DIR})")
    parser.add_argument(
        "--metric", default=None,
        help="rank and plot by this metric, e.g. valid_loss, valid_accuracy, best_valid_loss (default: the search's)",
    )
    parser.add_argument("--top", type=int, default=20, help="trials shown in the table (default: 20)")
    args = parser.parse_args(argv)
    if args.top < 1:
        print(f"error: --top must be >= 1, but got {args.top}", file=sys.stderr)
        return 2
    try:
        results = load(args.search, args.results_dir)
        print(describe(results, args.metric, args.top), flush=True)
        from artune.plots import write_plots

        for path in write_plots(results, args.metric):
            print(f"wrote {path}", flush=True)
    except BrokenPipeError:  # the output piped into `head`, say
        from artune import stdout_closed

        return stdout_closed()
    except (OSError, ResultsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    import sys

    from artune.results import main as _main  # the imported module, not this __main__ copy: one SearchResults class

    sys.exit(_main())
