"""The search's Optuna study: kept in real storage, and telling the truth about every trial.

Ray's ``OptunaSearch`` keeps its study in memory and records an ASHA-stopped trial as COMPLETE
with the value of a truncated run, and a trial that raised stays RUNNING. artune keeps a second,
persistent study (SQLite beside the results by default, or any Optuna storage URL) and writes
each trial into it once the trial has ended, from artune's own records, with the per-epoch metric
as intermediate values, the searched knobs as params, and artune's own fields (status, epochs,
tokens/s, error) as user attributes:

    completed -> COMPLETE (value: the metric at the last epoch)
    stopped   -> PRUNED   (ended early by the scheduler or the time budget)
    diverged  -> FAIL     error -> FAIL

Trials are only ever added finished, so the study never holds a RUNNING trial, whatever happens
to the driver. It opens as it is in optuna-dashboard and in Optuna's visualisation and importance
functions. A trial stopped before its first epoch (the time budget ended it while it started, or
before it started) is left out: it never trained, so it says nothing of its configuration, and a
sampler warm-started from it would take it for a bad one.

The same records warm-start the sampler of a grown search (``--extend``): an in-memory storage
holding every earlier trial is handed to ``OptunaSearch``, so the TPE sees the whole history.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Optional

import optuna
from optuna.trial import TrialState

from artune.results import TrialRecord
from artune.spaces import SearchSpace

STUDY_FILE = "optuna.db"
_STATES = {
    "completed": TrialState.COMPLETE,
    "stopped": TrialState.PRUNED,
    "diverged": TrialState.FAIL,
    "error": TrialState.FAIL,
}


def storage_url(directory: Path, storage: Optional[str] = None) -> str:
    return storage or f"sqlite:///{Path(directory).resolve() / STUDY_FILE}"


def direction(mode: str) -> str:
    return "minimize" if mode == "min" else "maximize"


def open_study(url: str, name: str, mode: str) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(storage=url, study_name=name, direction=direction(mode), load_if_exists=True)


def frozen_trial(record: TrialRecord, space: SearchSpace, metric: str) -> Optional[optuna.trial.FrozenTrial]:
    """The finished Optuna trial for an artune record, or None while the trial has not ended (or where
    it was stopped before it trained an epoch)."""
    state = _STATES.get(record.status)
    if state is None:
        return None
    epochs = [record.epochs[e] for e in sorted(record.epochs) if not record.epochs[e].get("diverged")]
    if state == TrialState.PRUNED and not epochs:
        return None
    intermediate = {int(m["epoch"]): float(m[metric]) for m in epochs if _finite(m.get(metric))}
    value = None
    if state == TrialState.COMPLETE:
        value = epochs[-1].get(metric) if epochs else None
        if not _finite(value):
            state = TrialState.FAIL
            value = None
    params, distributions = {}, {}
    for name in space.active(record.config):
        params[name] = record.config[name]
        distributions[name] = space.params[name].optuna_distribution()
    summary = record.summary()
    user_attrs = {
        "trial_id": record.trial_id,
        "status": record.status,
        "epochs_completed": summary["epochs_completed"],
        "tokens_per_sec": summary["tokens_per_sec"],
        "error": record.error,
    }
    return optuna.trial.create_trial(
        state=state,
        value=value,
        params=params,
        distributions=distributions,
        intermediate_values=intermediate,
        user_attrs=user_attrs,
    )


def sync_study(study: optuna.Study, records: Iterable[TrialRecord], space: SearchSpace, metric: str) -> int:
    """Add every ended trial not yet in the study; return how many were added.

    A trial is known by its id and how it ended: an errored trial that ``--resume`` ran again and that
    then ended otherwise is added once more (Optuna's trials cannot be changed once finished), so the
    study holds both outcomes, each with its ``status``.
    """
    known = {(t.user_attrs.get("trial_id"), t.user_attrs.get("status")) for t in study.get_trials(deepcopy=False)}
    added = 0
    for record in records:
        if (record.trial_id, record.status) in known:
            continue
        trial = frozen_trial(record, space, metric)
        if trial is not None:
            study.add_trial(trial)
            added += 1
    return added


def warm_start_storage(
    records: Iterable[TrialRecord], space: SearchSpace, name: str
) -> tuple[optuna.storages.BaseStorage, int]:
    """An in-memory storage whose study ``name`` holds every ended earlier trial, for OptunaSearch."""
    storage = optuna.storages.InMemoryStorage()
    s = space.settings
    study = optuna.create_study(storage=storage, study_name=name, direction=direction(s.mode))
    return storage, sync_study(study, records, space, s.metric)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
