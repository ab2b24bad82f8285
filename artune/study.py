"""The search's Optuna study: kept in real storage, live while the search runs, and telling the truth.

Ray's ``OptunaSearch`` keeps its study in memory and records an ASHA-stopped trial as COMPLETE
with the value of a truncated run, and a trial that raised stays RUNNING. artune keeps a second,
persistent study (SQLite beside the results by default, or any Optuna storage URL), written from
artune's own records as the search runs (``LiveStudy``): each trial as it starts (RUNNING, with its
searched knobs as params and its artune ``trial_id`` as a user attribute), each epoch's metric as an
intermediate value when it is reported, and as the trial ends its final state, with artune's own
fields (status, epochs, tokens/s, error) as user attributes:

    completed -> COMPLETE (value: the metric at the last epoch)
    stopped   -> PRUNED   (ended early by the scheduler or the time budget)
    diverged  -> FAIL     error -> FAIL

So optuna-dashboard shows the running trials and their curves live. A search interrupted by Ctrl-C
leaves its unfinished trials WAITING (``--resume`` continues them, and the same Optuna trials);
a killed driver leaves them RUNNING, and the ``--resume`` or ``--extend`` that follows takes them up by
their ``trial_id`` and ends them. One Optuna trial per artune trial, except an errored trial that
``--resume`` runs again: its FAIL is final (Optuna's finished trials cannot change), and the rerun is
a trial of its own. A trial stopped before its first epoch ends PRUNED with no value.

The same records warm-start the sampler of a grown search (``--extend``): an in-memory storage
holding every earlier ended trial is handed to ``OptunaSearch``, so the TPE sees the whole history.
Left out of it is a trial stopped before its first epoch: it never trained, so it says nothing of
its configuration, and a sampler would take it for a bad one. The grid sampler's warm start is one trial
per earlier draw instead (``add_grid_draws``): it numbers the grid's points by trial.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Iterable, Optional

import optuna
from optuna.trial import TrialState

from artune.humanize import root_cause
from artune.results.tables import LOST_PREFIX, TrialRecord, finite_number
from artune.spaces import SearchSpace

STUDY_FILE = "optuna.db"
_STATES = {
    "completed": TrialState.COMPLETE,
    "stopped": TrialState.PRUNED,
    "diverged": TrialState.FAIL,
    "error": TrialState.FAIL,
}


# A live trial's user attributes as it starts (its trial_id besides): those that its end leaves as they are
# cost no write then (each is a database commit on the driver's thread).
STARTED_ATTRS = {"status": "running", "epochs_completed": 0, "tokens_per_sec": None, "error": None}
# The status and error of a trial's attempt whose retry (from an earlier epoch: its last checkpoint, or its first
# where it keeps none) ended before the attempt's last epoch: in the study alone, whose values cannot be taken back
# (the tables drop the attempt's later epochs); the retry is the study's next trial of this id.
RESTARTED_STATUS = "restarted"
RESTARTED_ERROR = "retried from an earlier epoch, and the retry ended sooner: the study's next trial of this id"


def storage_url(directory: Path, storage: Optional[str] = None) -> str:
    """``storage``, else the SQLite URL of the study beside a search's tables. Built by SQLAlchemy, which quotes
    what a URL would read otherwise (a directory named ``a?b`` is not the database ``a`` with a query)."""
    from sqlalchemy.engine import URL

    if storage:
        return storage
    return URL.create("sqlite", database=str(Path(directory).resolve() / STUDY_FILE)).render_as_string(False)


def sqlite_file(url: str) -> Optional[Path]:
    """The database file of a SQLite URL (None for another database; the URL is checked by check_storage)."""
    from sqlalchemy.engine import make_url  # Optuna's storage layer

    parsed = make_url(url)
    return Path(parsed.database or ":memory:") if parsed.get_backend_name() == "sqlite" else None


def direction(mode: str) -> str:
    return "minimize" if mode == "min" else "maximize"


SCHEMA_TRIES = 5


def get_storage(url: str) -> optuna.storages.BaseStorage:
    """Optuna's storage at ``url``, its tables made where they are not yet. Two searches that open one new database
    at once both create them: on PostgreSQL the one that comes second fails (a unique violation in its catalog,
    seen in CI) though the tables are then there; it tries again, after the other's commit."""
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(1, SCHEMA_TRIES):
        try:
            return optuna.storages.get_storage(url)
        except (IntegrityError, ProgrammingError):
            time.sleep(0.2 * attempt)
    return optuna.storages.get_storage(url)


def frozen_trial(record: TrialRecord, space: SearchSpace, metric: str) -> Optional[optuna.trial.FrozenTrial]:
    """The finished Optuna trial for an artune record, or None while the trial has not ended (or where
    it was stopped before it trained an epoch)."""
    state = _STATES.get(record.status)
    if state is None:
        return None
    epochs = [record.epochs[e] for e in sorted(record.epochs) if not record.epochs[e].get("diverged")]
    if state == TrialState.PRUNED and not epochs:
        return None
    intermediate = {int(m["epoch"]): float(m[metric]) for m in epochs if finite_number(m.get(metric))}
    value = None
    if state == TrialState.COMPLETE:
        value = epochs[-1].get(metric) if epochs else None
        if not finite_number(value):
            state = TrialState.FAIL
            value = None
    params, distributions = knobs(record, space)
    return optuna.trial.create_trial(
        state=state,
        value=value,
        params=params,
        distributions=distributions,
        intermediate_values=intermediate,
        user_attrs=user_attrs(record),
    )


def knobs(record: TrialRecord, space: SearchSpace) -> tuple[dict[str, Any], dict[str, Any]]:
    """The trial's searched knobs as Optuna params, and their distributions."""
    params, distributions = {}, {}
    for name in space.active(record.config):
        params[name] = record.config[name]
        distributions[name] = space.params[name].optuna_distribution()
    return params, distributions


def user_attrs(record: TrialRecord) -> dict[str, Any]:
    summary = record.summary()
    return {
        "trial_id": record.trial_id,
        "status": record.status,
        "epochs_completed": summary["epochs_completed"],
        "tokens_per_sec": summary["tokens_per_sec"],
        "error": record.error,
    }


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
    if s.sampler == "grid":
        return storage, add_grid_draws(study, records, space, s.metric)
    return storage, sync_study(study, records, space, s.metric)


def add_grid_draws(study: optuna.Study, records: Iterable[TrialRecord], space: SearchSpace, metric: str) -> int:
    """One trial per grid point the earlier runs drew (``grid_draws``); how many were added."""
    added = 0
    for record in grid_draws(records, space):
        trial = frozen_trial(record, space, metric)
        if trial is None:
            params, distributions = knobs(record, space)
            trial = optuna.trial.create_trial(
                state=TrialState.PRUNED, params=params, distributions=distributions, user_attrs=user_attrs(record)
            )
        study.add_trial(trial)
        added += 1
    return added


def grid_draws(records: Iterable[TrialRecord], space: SearchSpace) -> list[TrialRecord]:
    """The earlier trials that each stand for one draw of the grid sampler: the warm start's, and what an
    --extend's num_samples is checked against (``SearchSpace.check_grid_fits``).

    Optuna's grid sampler gives a study's k-th trial the k-th point of the grid as its seed shuffles it (an
    extension keeps the seed: see ``make_sampler``), so the warm start must hold exactly one trial per earlier
    draw for an extension to go on with the points not run yet. A draw's ``--repeats`` share its ``config_id``
    and take the seeds seed, seed + 1, ...: a configuration drew as often as its most frequent seed ran (two
    grid points that differ only in a knob their conditions switch off give one configuration, drawn twice).
    A trial stopped before its first epoch counts too, as a pruned trial with no value (a grid sampler learns
    nothing from it); a lost trial does not: its configuration was drawn again, as the same point. With a trial
    per replicate, an extension skipped points and ran others twice.
    """
    configs: dict[str, list[TrialRecord]] = {}
    for record in records:
        if not (record.error or "").startswith(LOST_PREFIX):  # an older artune's lost trials too
            configs.setdefault(record.config_id or record.trial_id, []).append(record)
    draws: list[TrialRecord] = []
    for runs in configs.values():
        if "seed" not in space.params:  # (a searched seed allows no repeats: each run is a draw)
            by_seed: dict[Any, list[TrialRecord]] = {}
            for record in runs:
                by_seed.setdefault(record.config.get("seed"), []).append(record)
            runs = max(by_seed.values(), key=len)
        draws += runs
    return draws


class LiveStudy:
    """The search's persistent study, written as its trials start, report and end (see the module's docstring).

    One storage (one database engine) serves the whole search. The writes while a trial runs are the
    driver's small ones (a trial, an intermediate value) and never end the search: one that fails
    (a database another process holds locked) is said once, and the trial's end writes what it missed.
    """

    def __init__(self, url: str, name: str, space: SearchSpace, metric: str, mode: str) -> None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.space, self.metric = space, metric
        self.storage = get_storage(url)
        self.study = optuna.create_study(
            storage=self.storage, study_name=name, direction=direction(mode), load_if_exists=True
        )
        self.study_id = self.storage.get_study_id_from_name(name)
        self.open: dict[str, int] = {}  # artune trial id -> Optuna's, of the trials not ended (RUNNING, WAITING)
        self.waiting: set[str] = set()
        self.written: dict[str, dict[int, float]] = {}  # the intermediate values written, by artune trial id
        self.known: set[tuple[Any, Any]] = set()  # (trial id, status) of the ended trials
        self.started_here: set[str] = set()  # trials this run started (a resume's run of an errored trial again)
        self._failed_write = False
        for trial in self.storage.get_all_trials(self.study_id, deepcopy=False):
            trial_id = trial.user_attrs.get("trial_id")
            if trial.state in (TrialState.RUNNING, TrialState.WAITING):  # a killed or interrupted run's
                self.open[trial_id] = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, trial.number)
                self.written[trial_id] = dict(trial.intermediate_values)
                if trial.state == TrialState.WAITING:
                    self.waiting.add(trial_id)
            else:
                self.known.add((trial_id, trial.user_attrs.get("status")))

    def start(self, record: TrialRecord) -> None:
        """The trial started: RUNNING, a new Optuna trial or the one an interrupted run left."""
        trial_id = record.trial_id
        if (trial_id, record.status) in self.known:
            return  # a resumed search's trial that had ended: it ends at once (train_fn's `ended`)
        self.started_here.add(trial_id)
        try:
            if trial_id in self.open:
                if trial_id in self.waiting:
                    self.storage.set_trial_state_values(self.open[trial_id], TrialState.RUNNING)
                    self.waiting.discard(trial_id)
                return
            self._open(record)
        except Exception as exc:  # noqa: BLE001 - a live write is best effort; the trial's end writes it whole
            self._warn(exc)

    def _open(self, record: TrialRecord) -> None:
        """A new RUNNING Optuna trial for ``record``."""
        params, distributions = knobs(record, self.space)
        template = optuna.trial.create_trial(
            state=TrialState.RUNNING,
            params=params,
            distributions=distributions,
            user_attrs={**STARTED_ATTRS, "trial_id": record.trial_id},
        )
        self.open[record.trial_id] = self.storage.create_new_trial(self.study_id, template_trial=template)
        self.written[record.trial_id] = {}

    def _restarted(self, optuna_id: int) -> None:
        """End an attempt whose epochs the trial went back on (see RESTARTED_ERROR)."""
        self.storage.set_trial_user_attr(optuna_id, "status", RESTARTED_STATUS)
        self.storage.set_trial_user_attr(optuna_id, "error", RESTARTED_ERROR)
        self.storage.set_trial_state_values(optuna_id, TrialState.FAIL)

    def report(self, record: TrialRecord, metrics: dict[str, Any]) -> None:
        """An epoch of a running trial: its metric as the intermediate value of step ``epoch``."""
        value = metrics.get(self.metric)
        if metrics.get("diverged") or not finite_number(value) or "epoch" not in metrics:
            return
        if record.trial_id not in self.open:
            self.start(record)
        if record.trial_id not in self.open:
            return
        # An epoch at or before one written comes from a retry (from the trial's last checkpoint, or its first epoch
        # where it keeps none): its value takes the attempt's place, as in the tables; see end() for a retry that
        # stops short of the attempt's last epoch.
        epoch = int(metrics["epoch"])
        try:
            self.storage.set_trial_intermediate_value(self.open[record.trial_id], epoch, float(value))
            self.written[record.trial_id][epoch] = float(value)
        except Exception as exc:  # noqa: BLE001 - as in start
            self._warn(exc)

    def sync(self, records: Iterable[TrialRecord]) -> int:
        """Give every ended trial its final state (adding the trials the study lacks); how many were ended."""
        return sum(self.end(record) for record in records if record.status in _STATES)

    def end(self, record: TrialRecord, state: Optional[TrialState] = None) -> bool:
        """Give the trial its final state: its status's, or ``state`` where the status has none."""
        key = (record.trial_id, record.status)
        reopened = record.trial_id in self.open and record.trial_id in self.started_here  # run again, ended so again
        if key in self.known and not reopened:
            return False
        final = frozen_trial(record, self.space, self.metric)
        optuna_id = self.open.pop(record.trial_id, None)
        self.waiting.discard(record.trial_id)
        written = self.written.pop(record.trial_id, {})
        self.known.add(key)
        if optuna_id is None:  # never started here (a search from before the study was live)
            if final is None:
                return False
            self.study.add_trial(final)
            return True
        if final is not None and set(written) - set(final.intermediate_values):
            # a retry that ended before the attempt's last epoch (ASHA, the budget): the attempt's later values cannot
            # be taken back, so it ends as the attempt it was, and the retry is a trial of its own
            self._restarted(optuna_id)
            self.study.add_trial(final)
            return True
        if final is not None:
            state, values, intermediate = final.state, final.values, final.intermediate_values
        else:  # stopped before its first epoch, or never continued after a crash
            state, values, intermediate = state or TrialState.PRUNED, None, {}
        for step, value in intermediate.items():
            if written.get(step) != value:
                self.storage.set_trial_intermediate_value(optuna_id, step, value)
        for key_, value in user_attrs(record).items():
            if STARTED_ATTRS.get(key_, value) != value or key_ == "status":  # a commit each: only what changed
                self.storage.set_trial_user_attr(optuna_id, key_, value)
        self.storage.set_trial_state_values(optuna_id, state, values)
        return True

    def pause(self) -> None:
        """Ctrl-C: the unfinished trials wait for ``--resume`` (WAITING), which continues them."""
        for trial_id, optuna_id in self.open.items():
            if trial_id not in self.waiting:
                self.storage.set_trial_state_values(optuna_id, TrialState.WAITING)
                self.waiting.add(trial_id)

    def settle(self, records: dict[str, TrialRecord]) -> None:
        """The search has ended: a trial still open (a killed run's that Tune did not continue) is PRUNED."""
        for trial_id in list(self.open):
            record = records.get(trial_id) or TrialRecord(trial_id, {}, "running")
            self.end(record, TrialState.PRUNED)

    def _warn(self, exc: Exception) -> None:
        if not self._failed_write:
            self._failed_write = True
            print(
                f"warning: the Optuna study could not be written while a trial ran ({root_cause(exc)}); "
                "each trial's end writes it whole",
                file=sys.stderr,
                flush=True,
            )
