"""A search's tables as pandas DataFrames, for notebooks: :func:`load`, :func:`compare`, :class:`SearchResults`.

pandas is imported where a DataFrame is built, so that the driver, which imports this package to write
the tables, never pays for it. The figures of a SearchResults live in :mod:`artune.plots`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import pyarrow as pa

from artune.config import AUTO_SWITCHES, FIELD_NAMES, TrainConfig, field_type
from artune.errors import ResultsError, ResultsNotFound
from artune.humanize import did_you_mean
from artune.results.tables import (
    DEFAULT_RESULTS_DIR,
    EPOCH_COLUMNS,
    EPOCHS_FILE,
    MANIFEST_FILE,
    STATUSES,
    TRIAL_SUMMARY_COLUMNS,
    TRIALS_FILE,
    check_table,
    knob_value,
    manifest_runs,
    read_table,
    read_tables,
)

if TYPE_CHECKING:
    import pandas as pd

    from artune.inference import LoadedModel

# The metrics that get better as they rise; every other (losses, seconds) gets better as it falls.
# Used only for a metric other than the search's own, whose direction manifest.json records.
_RISING = ("accuracy", "tokens_per_sec", "epochs_completed", "tokens_seen")
_NOT_METRICS = {"trial_id", "epoch", "config_id", "search", "workers", *FIELD_NAMES}


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
    def runs(self) -> list[str]:
        """The search's Ray runs (directories), first to last: ``tune``, then one per ``--extend``."""
        return manifest_runs(self.manifest)

    @property
    def mode(self) -> str:
        return self.manifest.get("mode", "min")

    def active(self, knob: str) -> pd.Series:
        """Per trial, whether ``knob`` was sampled: False where its ``when`` (manifest.json's
        ``conditions``) did not hold. Such a trial's column holds the value it trained with (the
        fixed one or TrainConfig's default), which the search did not choose; plots leave it out."""
        import pandas as pd

        if knob not in FIELD_NAMES:
            hint = did_you_mean(knob, FIELD_NAMES)
            raise ResultsError(f"unknown knob {knob!r}{hint}: expected a TrainConfig field, as the tables' columns")
        by_search = self.manifest.get("by_search")
        if by_search is None:
            return self._conditions_hold(self.manifest.get("conditions", {}).get(knob, {}))
        # compare()'s stack: each row by its own search's params and conditions (a knob another search searched
        # was not sampled in this one's trials)
        on = pd.Series(False, index=self.trials.index)
        for name, searched in by_search.items():
            if knob in searched["params"]:
                on |= (self.trials["search"] == name) & self._conditions_hold(searched["conditions"].get(knob, {}))
        return on

    def _conditions_hold(self, conditions: dict[str, list[Any]]) -> pd.Series:
        """Per trial, whether every ``parent: [allowed values]`` holds (``None`` among them: the knob unset)."""
        import numpy as np
        import pandas as pd

        on = pd.Series(True, index=self.trials.index)
        for parent, allowed in conditions.items():
            if parent in self.trials:
                column = self.trials[parent]
                holds = column.isin([value for value in allowed if value is not None])
                numbers = [v for v in allowed if isinstance(v, (int, float)) and not isinstance(v, bool)]
                if numbers and pd.api.types.is_float_dtype(column):  # a stepped uniform's 0.15000000000000002
                    close = np.isclose(column.to_numpy(float)[:, None], np.array(numbers, float)[None, :], rtol=1e-9)
                    holds |= pd.Series(close.any(axis=1), index=column.index)
                if any(value is None for value in allowed):  # pandas reads a none back as <NA> or NaN
                    holds |= column.isna()
                on &= holds
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
        choices = self._metric_choices()
        if metric not in choices and base not in choices:  # a typo ranked as a loss
            raise ResultsError(
                f"unknown metric {metric!r}{_metric_hint(metric, choices)}: expected one of {_listed(choices)}"
            )
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
        choices = self._metric_choices()
        hint = _metric_hint(metric, choices)
        raise ResultsError(f"unknown metric {metric!r}{hint}: expected one of {_listed(choices)}")

    def epoch_metric(self, metric: Optional[str] = None) -> str:
        """The epochs column behind ``metric``: ``valid_loss`` for valid_loss, best_valid_loss or last_valid_loss."""
        metric = metric or self.metric
        columns = _numeric_columns(self.epochs)
        for candidate in (metric, metric.removeprefix("best_"), metric.removeprefix("last_")):
            if candidate in columns:
                return candidate
        hint = _metric_hint(metric, columns)
        raise ResultsError(f"no per-epoch values of {metric!r}{hint}: expected one of {_listed(columns)}")

    def best(self, k: int = 1, metric: Optional[str] = None) -> pd.DataFrame:
        """The ``k`` best trials, best first, by the search's metric and mode (trials without a value left out).

        Every column of ``trials``, led by the trial, the metric and the searched knobs: the rest (the fixed
        knobs, the other metrics) follow, where pandas' display folds them away."""
        if k < 1:
            raise ValueError(f"best(k) needs k >= 1, but got k={k}")
        name, values = self.metric_column(metric)
        ranked = self.trials.assign(**{name: values}).dropna(subset=[name])
        ascending = self.direction(name) == "min"
        lead = [c for c in ("search", "trial_id", name, *self.params, "status", "epochs_completed") if c in ranked]
        ranked = ranked[list(dict.fromkeys([*lead, *ranked.columns]))]
        return ranked.sort_values(name, ascending=ascending, kind="stable").head(k).reset_index(drop=True)

    # --- one trial, and its model

    def trial(self, trial_id: Optional[str] = None) -> pd.Series:
        """The row of trial ``trial_id``, or of the best trial by the search's metric; either must have
        finished an epoch (its model is what a caller wants)."""
        if self.path is None:
            raise ResultsError("a trial of compare()'s stack: load() its own search and ask that")
        if trial_id is None:
            best = self.best(1)
            if best.empty:
                column, _ = self.metric_column()
                raise ResultsError(
                    f"search {self.name!r} in {self.path}: no trial finished an epoch (no {column} in "
                    f"{TRIALS_FILE}), so it has no model"
                )
            return best.iloc[0]
        row = self._row(trial_id)
        if not self.trial_epochs(trial_id):
            raise ResultsError(
                f"trial {trial_id} of {self.path} finished no epoch ({row['status']}), so it has no model"
            )
        return row

    def _row(self, trial_id: str) -> pd.Series:
        if self.path is None:
            raise ResultsError("a trial of compare()'s stack: load() its own search and ask that")
        self._check_trial(trial_id)
        return self.trials[self.trials["trial_id"] == trial_id].iloc[0]

    def _check_trial(self, trial_id: str) -> None:
        if not (self.trials["trial_id"] == trial_id).any():
            ids = ", ".join(self.trials["trial_id"].head(10))
            if len(self.trials) > 10:
                ids += f" and {len(self.trials) - 10} more"
            where = self.path / TRIALS_FILE if self.path is not None else "the compared searches"
            raise ResultsError(f"no trial {trial_id!r} in {where} (its trials: {ids})")

    def trial_epochs(self, trial_id: str) -> dict[int, float]:
        """A trial's finished epochs and their value of the search's metric, best first."""
        self._check_trial(trial_id)
        if "search" in self.trials:  # compare()'s stack: an id two searches share would merge their epochs
            searches = self.trials.loc[self.trials["trial_id"] == trial_id, "search"].unique().tolist()
            if len(searches) > 1:
                raise ResultsError(
                    f"trial {trial_id!r} is in searches {', '.join(searches)} of compare()'s stack: load() its own "
                    "search and ask that"
                )
        column = self.epoch_metric()
        rows = self.epochs[self.epochs["trial_id"] == trial_id].dropna(subset=[column])
        ranked = rows.sort_values([column, "epoch"], ascending=[self.mode == "min", True], kind="stable")
        return {int(e): float(v) for e, v in zip(ranked["epoch"], ranked[column])}

    def config(self, trial_id: Optional[str] = None) -> TrainConfig:
        """The TrainConfig a trial trained with (default: the best trial's), from its row of the trials table: any
        trial's, one that finished no epoch included (a diverged one, to train again with a change)."""
        row = self.trial() if trial_id is None else self._row(trial_id)
        return TrainConfig.from_dict({name: knob_value(name, _plain(row[name])) for name in FIELD_NAMES if name in row})

    def reload(self) -> SearchResults:
        """The search as its tables are now (a running search rewrites them every 2 s)."""
        if self.path is None:
            raise ResultsError("a reload of compare()'s stack: compare() the searches again")
        return load(self.path)

    def best_model(self, device: str = "cpu") -> LoadedModel:
        """The best trial's model at its best epoch, ready to ``generate`` (see :mod:`artune.inference`)."""
        from artune.inference import from_search

        return from_search(self, None, device)

    def model(self, trial_id: str, device: str = "cpu") -> LoadedModel:
        """Trial ``trial_id``'s model at its best epoch."""
        from artune.inference import from_search

        return from_search(self, trial_id, device)

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
        ranked = table.sort_values(name, ascending=ascending, na_position="last", kind="stable")
        return ranked.reset_index(drop=True)

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
        stats = (
            grouped[name]
            .agg(["mean", "std", "count"])
            .join(grouped["epochs_completed"].agg(min_epochs="min", max_epochs="max"))
        )
        pooled = grouped[self.params].first().join(stats).reset_index()
        ascending = self.direction(name) == "min"
        ranked = pooled.sort_values("mean", ascending=ascending, na_position="last", kind="stable")
        return ranked.reset_index(drop=True)

    def _config_ids(self) -> pd.Series:
        ids = self.trials["trial_id"]
        if "config_id" in self.trials:
            ids = self.trials["config_id"].where(self.trials["config_id"].notna(), ids)
        return ids

    def _config_keys(self) -> list[str]:
        return ["search", "config_id"] if "search" in self.trials else ["config_id"]

    def _metric_choices(self) -> list[str]:
        return list(dict.fromkeys([*_numeric_columns(self.epochs), *_numeric_columns(self.trials)]))


def _metric_hint(metric: str, choices: list[str]) -> str:
    # the progress lines' short names (valid_acc) as the columns' (valid_accuracy)
    return did_you_mean(metric.replace("_acc", "_accuracy") if metric.endswith("_acc") else metric, choices)


def _listed(choices: list[str]) -> str:
    """The metrics by name, the per-layer statistics (``grad_norm/...``: dozens, when logged) counted instead."""
    named = [c for c in choices if "/" not in c]
    layers = len(choices) - len(named)
    return ", ".join(named) + (f" and {layers} per-layer statistics (grad_norm/..., param_norm/...)" if layers else "")


def _plain(value: Any) -> Any:
    """A table cell as TrainConfig takes it: None for pandas' missing values, Python scalars for numpy's."""
    import pandas as pd

    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def _numeric_columns(frame: pd.DataFrame) -> list[str]:
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    return [
        name
        for name in frame.columns
        if name not in _NOT_METRICS and is_numeric_dtype(frame[name]) and not is_bool_dtype(frame[name])
    ]


def resolve_results_path(path_or_name: str | os.PathLike, results_dir: str | os.PathLike = DEFAULT_RESULTS_DIR) -> Path:
    """A search's directory: ``path_or_name`` itself, else that name under ``results_dir``."""
    path = Path(path_or_name)
    if (path / TRIALS_FILE).exists():
        return path
    candidate = Path(results_dir) / path
    if (candidate / TRIALS_FILE).exists():
        return candidate
    where = f"{path}" if candidate == path else f"{path} or {candidate}"
    for started in (path, candidate):
        if (started / MANIFEST_FILE).is_file():  # a search that has not written its tables yet
            raise ResultsNotFound(
                f"no {TRIALS_FILE} in {started}: its search has written its manifest and no table yet (a running "
                "search writes them at its first trial's first epoch, or end; a killed one goes on with --resume)",
                str(started),
            )
    raise ResultsNotFound(f"no {TRIALS_FILE} in {where}: is it a finished or running search?", where)


def load(path_or_name: str | os.PathLike, results_dir: str | os.PathLike = DEFAULT_RESULTS_DIR) -> SearchResults:
    """Load a search by its directory or its name under ``results_dir``."""
    import pandas as pd

    path = resolve_results_path(path_or_name, results_dir)
    manifest_path = path / MANIFEST_FILE
    try:
        manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    except ValueError as error:  # not JSON, or not UTF-8
        raise ResultsError(f"{manifest_path}: not valid JSON ({error})") from None
    except OSError as error:  # another user's search (EACCES), or not a file
        raise ResultsError(f"{manifest_path}: cannot be read ({error.strerror or error})") from None
    if not isinstance(manifest, dict):
        raise ResultsError(
            f"{manifest_path}: not a search's manifest (a JSON {type(manifest).__name__}, not an object)"
        )
    if manifest.get("mode", "min") not in ("min", "max"):  # any other ranked as max
        raise ResultsError(f"{manifest_path}: mode: must be 'min' or 'max', but got {manifest['mode']!r}")
    trials_table, epochs_table = read_tables(path, read_table)
    trials = trials_table.to_pandas()
    missing = [c for c in ("trial_id", "status") if c not in trials]
    if missing:
        raise ResultsError(f"{path / TRIALS_FILE}: no column {missing[0]!r}; is it a table artune wrote?")
    check_table(path / TRIALS_FILE, trials_table, TRIAL_SUMMARY_COLUMNS, ["trial_id"])
    if epochs_table is not None:
        check_table(path / EPOCHS_FILE, epochs_table, EPOCH_COLUMNS, ["trial_id", "epoch"])
    for name in FIELD_NAMES:
        kind, optional = field_type(name)
        if name in trials and kind is int and optional:
            trials[name] = trials[name].astype("Int64")  # d_ff, batches_per_epoch: none stays <NA>, not NaN
        if name in trials and name in AUTO_SWITCHES and not pd.api.types.is_bool_dtype(trials[name]):
            # compile: True and False as the configs hold them (and as tables before 'auto' did), 'auto' as text
            values = trials[name].map(partial(knob_value, name))
            trials[name] = values if values.isna().any() or (values == "auto").any() else values.astype(bool)
    if epochs_table is None:
        if "epochs_completed" in trials and (trials["epochs_completed"].fillna(0) > 0).any():
            raise ResultsError(  # artune writes it before trials.parquet: a partial copy, or a file removed
                f"{path / EPOCHS_FILE}: missing, though {TRIALS_FILE} counts finished epochs; the search's record "
                "is incomplete: copy the whole search directory"
            )
        epochs_table = pa.schema(list(EPOCH_COLUMNS.items())).empty_table()
    epochs = epochs_table.to_pandas()
    results = SearchResults(path, trials, epochs, manifest)
    choices = results._metric_choices()
    if "metric" in manifest and manifest["metric"] not in choices:  # hand-edited: every ranking would fail later
        hint = _metric_hint(str(manifest["metric"]), choices)
        raise ResultsError(
            f"{manifest_path}: metric: unknown metric {manifest['metric']!r}{hint}: expected one of {_listed(choices)}"
        )
    return results


def compare(
    *searches: str | os.PathLike | SearchResults, results_dir: str | os.PathLike = DEFAULT_RESULTS_DIR
) -> SearchResults:
    """Several searches stacked into one SearchResults, each row tagged with a ``search`` column.

    The search is named by its manifest (else its directory). Metric and mode come from the first
    search; ``params`` is the union of every search's searched knobs. Searches trained on different
    corpora (another text, or another tokenizer of it) are stacked with a warning naming each one's:
    a loss per token of one text does not rank against another's, though the curves may still be
    worth a look side by side.
    """
    if not searches:
        raise ResultsError("compare() needs at least one search, but got none")
    loaded = [s if isinstance(s, SearchResults) else load(s, results_dir) for s in searches]
    if any(results.path is None for results in loaded):  # its rows carry a search column of their own
        raise ResultsError("compare() of a compare()'s stack: pass the searches themselves, compare(a, b, c)")
    paths = [r.path.resolve() for r in loaded]
    twice = [str(p) for p in dict.fromkeys(paths) if paths.count(p) > 1]
    if twice:
        raise ResultsError(f"compare() got the search in {twice[0]} twice")
    names: list[str] = []
    for results in loaded:
        names.append(results.name if results.name not in names else str(results.path))  # two searches of one name

    def stack(frames: list[pd.DataFrame]) -> pd.DataFrame:
        import pandas as pd

        tagged = [
            frame.assign(search=name)[["search", *frame.columns.drop("search", errors="ignore")]]
            for frame, name in zip(frames, names)
        ]
        return pd.concat([t for t in tagged if len(t)] or tagged[:1], ignore_index=True)

    _warn_of_other_corpora(names, loaded)
    first = loaded[0]
    manifest = {
        "name": " vs ".join(names),
        "searches": names,
        "metric": first.metric,
        "mode": first.mode,
        "params": list(dict.fromkeys(p for results in loaded for p in results.params)),
    }
    manifest["by_search"] = {  # what active() reads: each search's own knobs and conditions
        name: {"params": results.params, "conditions": results.manifest.get("conditions", {})}
        for name, results in zip(names, loaded)
    }
    return SearchResults(None, stack([r.trials for r in loaded]), stack([r.epochs for r in loaded]), manifest)


def _warn_of_other_corpora(names: list[str], loaded: list[SearchResults]) -> None:
    """compare()'s warning where the searches' manifests record different corpora (or tokenizers)."""
    import warnings

    corpora = {name: results.manifest.get("corpus", {}) for name, results in zip(names, loaded)}
    known = {name: c for name, c in corpora.items() if c.get("sha256")}
    if len({(c["sha256"], c.get("tokenizer")) for c in known.values()}) <= 1:
        return
    described = "; ".join(
        f"{name}: {Path(c.get('source', '?')).name} sha256 {c['sha256'][:12]} {c.get('tokenizer', '')}".rstrip()
        for name, c in known.items()
    )
    warnings.warn(
        f"compare(): these searches trained on different corpora ({described}); their metrics do not rank "
        "against each other",
        UserWarning,
        stacklevel=3,
    )
