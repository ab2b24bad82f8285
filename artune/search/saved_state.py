"""Ray Tune's saved state of a run, checked before ``--resume`` continues from it, and restored where torn.

Tune writes its state into Ray's session directory, then copies it into the run directory without
an atomic rename: a driver killed during the copy leaves the newest ``experiment_state-*.json`` (or
its searcher's state beside it) empty or cut short, and Tune would resume from it without a word,
losing the trials it listed, or fail on it. The staging copy outlives the driver: Ray never deletes
a session directory. (The layout of those files as Ray 2.60.0 writes them: see artune/compat.py.)
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from artune.errors import SearchError, StorageError
from artune.humanize import describe_os_error
from artune.results.tables import LOST_ERROR, LOST_PREFIX, LOST_STATE_ERROR
from artune.search.runtime import ray_temp_dir

if TYPE_CHECKING:
    from artune.search.plan import Plan


def tune_began(tune_path: Path) -> bool:
    """Whether Ray Tune began the run, so that it can be restored: its ``tuner.pkl`` is whole and it saved its
    state once (it does before its first trial). Tune writes the Tuner in place: a kill in the write leaves it
    empty or cut short (a pickle ends with its STOP opcode). Restored without a saved state, Tune runs one trial.
    (Tune's file names as Ray 2.60.0 writes them: see artune/compat.py.)"""
    if not any(tune_path.glob("experiment_state-*.json")):
        return False
    try:
        with open(tune_path / "tuner.pkl", "rb") as file:
            file.seek(-1, os.SEEK_END)
            return file.read(1) == b"."
    except OSError:  # not there, or empty (the seek fails)
        return False


def check_saved_state(tune_path: Path) -> Optional[Path]:
    """The staging directory to restore the run's saved state from where a killed driver cut it short; None
    where it is whole. Refuses where neither is whole. (Tune reads the newest state by name, as here.)"""
    states = sorted(tune_path.glob("experiment_state-*.json"))
    if not states:
        return None
    newest = states[-1]
    problem = torn_file(newest)
    if problem is None:
        return None
    torn, what = problem
    staged = staged_state(newest)
    if staged is None:
        raise SearchError(
            f"--resume: Ray Tune's saved state {torn} is {what}: the driver was stopped while Tune wrote it, "
            f"and no whole copy of it is left in Tune's staging directories under {ray_temp_dir()} (a cluster started "
            "with ray start --temp-dir DIR keeps them in DIR: give RAY_TMPDIR=DIR), so the trials it listed cannot be "
            "continued; the tables keep every result so far, so start the search again under another --name"
        )
    return staged.parent


def torn_file(state: Path) -> Optional[tuple[Path, str]]:
    """The first file of a saved state that is empty, or (the state itself, JSON) does not parse, with what is
    wrong with it; None where all are whole. Beside the state, named by the same start: the searcher's
    pickles (``searcher-state-*.pkl``, and ``search_gen_state-*.json``, a pickle despite its name)."""
    stamp = state.stem.removeprefix("experiment_state-")
    for path in [state, *sorted(p for p in state.parent.glob(f"*-{stamp}.*") if p != state)]:
        try:
            if path.stat().st_size == 0:
                return path, "empty"
            if path == state:
                json.loads(path.read_text())
        except (OSError, ValueError) as error:
            return path, f"unreadable ({error})"
    return None


def staged_state(state: Path) -> Optional[Path]:
    """Ray Tune's staging copy of the saved state ``state``, where one is whole; the newest of several.

    Tune stages a run's files in ``<session>/artifacts/<start>/<run>/driver_artifacts/``; the state's
    name holds the run's start to the second, and the copy must list a trial of this run.
    """
    tune_path = state.parent
    pattern = f"session_*/artifacts/*/{tune_path.name}/driver_artifacts/{state.name}"
    # RAY_TMPDIR may also name a cluster's `ray start --temp-dir`, which holds its sessions itself (no ray/ below)
    roots = {ray_temp_dir(), *([Path(os.environ["RAY_TMPDIR"])] if os.environ.get("RAY_TMPDIR") else [])}
    candidates = sorted(
        (p for root in roots for p in root.glob(pattern)), key=lambda p: p.stat().st_mtime, reverse=True
    )
    for candidate in candidates:
        if torn_file(candidate) is not None:
            continue
        try:
            trials = [json.loads(trial)["trial_id"] for trial, _ in json.loads(candidate.read_text())["trial_data"]]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if any((tune_path / trial_id).is_dir() for trial_id in trials):
            return candidate
    return None


def restore_saved_state(plan: Plan) -> None:
    """Put Tune's staging copy of the run's saved state in place of the one a killed driver cut short.

    Every file of the staging directory (the state, the searcher's state, the Tuner), each written
    whole and renamed into place: the set Tune meant to copy, from one moment.
    """
    staging = plan.restore_state_from
    try:
        for source in sorted(p for p in staging.iterdir() if p.is_file()):
            target = plan.tune_path / source.name
            partial = target.with_name(f".{source.name}.restoring")
            shutil.copyfile(source, partial)
            os.replace(partial, target)
    except OSError as exc:
        raise SearchError(
            f"--resume: cannot restore Ray Tune's saved state from {staging} ({exc}); "
            "start the search again under another --name"
        ) from None
    print(
        f"warning: Ray Tune's saved state in {plan.tune_path} was cut short (its driver was killed while Tune "
        f"copied it); restored it from Tune's own staging copy in {staging}",
        file=sys.stderr,
        flush=True,
    )


def saved_trials(tune_path: Path) -> Optional[dict[str, str]]:
    """The trials of the run's newest saved state, by id, with the status Tune saved (RUNNING, TERMINATED, ...);
    None where Tune saved no state."""
    states = sorted(tune_path.glob("experiment_state-*.json"))
    if not states:
        return None
    try:
        data = json.loads(states[-1].read_text())
        return {json.loads(t)["trial_id"]: json.loads(t).get("status", "") for t, _ in data["trial_data"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None  # a torn state is restored or refused before (check_saved_state)


def settle_unsaved_trials(plan: Plan) -> None:
    """Before a resume, the tables' unfinished trials that Ray Tune will not run again, settled as its saved state
    says. A driver killed between Tune's saving of its state and the tables' next write leaves:

    - a trial Ray started (its params.json, perhaps a result.json, or only its journal lines: Ray had not copied
      its directory yet) that the state lacks (it started after Tune last saved): Tune samples its configuration
      again under a new id, so this one never ends: recorded ``error``, saying why (the live study's trial of it
      ends so too);
    - a trial the state holds TERMINATED (ASHA, or its last epoch) that the tables still call running: Tune does not
      run it again, so the resume would count it unfinished for ever: ``completed`` or ``stopped``.

    A run Tune begins anew (``plan.fresh_run``: its driver was killed before Tune began it) saved no trial: its
    trials the tables call running are lost so.

    Ray's import is in recorder.py: this runs once Ray is up.
    """
    from artune.results import read_records
    from artune.search.journal import merge_journal, started_in
    from artune.search.recorder import merge_ray_results, new_record

    saved = {} if plan.fresh_run else saved_trials(plan.tune_path)
    if saved is None:
        return
    records = read_records(plan.directory)
    merge_journal(records, plan.directory)  # the trials and epochs the tables missed
    merge_ray_results(records, plan.tune_path)  # and those of a search begun before it had a journal
    for params in sorted(plan.tune_path.glob("*/params.json")):  # and those killed before their first result
        trial_id = params.parent.name
        if trial_id not in records and trial_id not in saved:
            try:
                records[trial_id] = new_record(trial_id, json.loads(params.read_text()), "running")
            except (OSError, ValueError):
                continue  # cut short by the kill
    started = started_in(plan.directory, plan.run_name)  # this run's, their directories copied to it or not yet
    settled = 0
    for trial_id, record in records.items():
        if not (plan.tune_path / trial_id).is_dir() and trial_id not in started:
            continue  # a trial of an earlier run
        status = saved.get(trial_id)
        if record.status == "error" and status is None and not (record.error or "").startswith(LOST_PREFIX):
            # failed before Tune saved it (its worker's node went with a lost cluster, say): Tune will not run it
            # again either, but sample it anew
            record.error = f"{LOST_ERROR} (it had failed: {record.error})"
            settled += 1
            continue
        if record.status not in ("running", "pending"):
            continue  # ended
        if status is None:
            record.status, record.error = "error", LOST_ERROR
        elif status == "TERMINATED":
            record.end(plan.space.settings.epochs)
        else:
            continue
        settled += 1
    if settled:
        write_settled(plan, records)


def settle_lost_run(plan: Plan) -> None:
    """Before an extend, the unfinished trials of a last run whose Ray Tune state is gone (its tune/ deleted after
    an interrupt, say: ``--resume`` refuses it), recorded lost: nothing can run them again, and left running they
    would be counted unfinished for ever."""
    from artune.results import read_records
    from artune.search.journal import merge_journal

    last = plan.manifest.runs[-1]
    if plan.manifest.last_run_finished() or tune_began(plan.directory / last):
        return
    records = read_records(plan.directory)
    merge_journal(records, plan.directory)
    # every unended trial is the last run's (each earlier run ended; a resume goes on in the same run), the ones
    # Tune had queued and never started too
    lost = [r for r in records.values() if r.status in ("running", "pending")]
    for record in lost:
        record.status, record.error = "error", LOST_STATE_ERROR
    if lost:
        print(
            f"note: {len(lost)} unfinished trial(s) of run {last!r}, whose Ray Tune state is gone, recorded lost",
            flush=True,
        )
        write_settled(plan, records)


def write_settled(plan: Plan, records: dict) -> None:
    from artune.results import write_tables

    try:
        write_tables(plan.directory, records.values(), plan.space.settings.workers)
    except OSError as exc:  # the storage still failing, say: one line and exit 4, as a failure in the search
        raise StorageError(
            f"the search's storage failed: {plan.directory}: the tables cannot be written "
            f"({describe_os_error(exc)}); once that is fixed, continue with: {plan.resume_command}"
        ) from None
