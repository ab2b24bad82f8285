"""A planned search run to its end: the corpus, the search's directory under lock, Ray and the Tuner, the summary."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import shutil
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Optional

from artune import plural
from artune.compat import ctrl_c_taken_by_tune
from artune.errors import SearchError, StorageError
from artune.humanize import describe_os_error, first_line
from artune.results import EPOCHS_FILE, MANIFEST_FILE, TRIALS_FILE, TUNE_DIR
from artune.search.corpus import load_plan_corpus
from artune.search.lock import SearchLock
from artune.search.manifest import write_manifest
from artune.search.plan import SPACE_COPY, Mode, Plan
from artune.search.report import budget_report, describe_plan, next_steps, summarise
from artune.search.runtime import (
    ClusterWatch,
    init_ray,
    interrupts_kept,
    set_ray_environment,
    stop_ray,
    terminated,
)
from artune.search.saved_state import restore_saved_state, settle_lost_run, settle_unsaved_trials
from artune.search.storage import sqlite_write_error
from artune.startup import resume_collector
from artune.study import STUDY_FILE, storage_url

if TYPE_CHECKING:
    from artune.data import Corpus
    from artune.results import TrialRecord

EXIT_OK, EXIT_NO_TRIAL_SUCCEEDED, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 130, 143
EXIT_STORAGE_FAILED = 4  # the results directory or the study's database could not be written


@dataclass
class Outcome:
    interrupted: int  # trials left unfinished (Ctrl-C): the search goes on with --resume
    elapsed_s: float  # from the command's start to the end of Tuner.fit
    spent: dict[str, list[float]]  # the seconds of each epoch trained in this run, by trial
    records: dict[str, TrialRecord]
    storage_failure: Optional[str] = None  # what failed, where the search's storage did
    between_trials: bool = False  # a Ctrl-C came while no trial ran: the search goes on with --resume


def run(plan: Plan) -> int:
    """Run the search the plan describes and print its outcome; the exit code."""
    plan.stopwatch.lap("plan")  # Python's imports, the arguments and the space validated
    corpus = load_plan_corpus(plan)
    plan.stopwatch.lap("corpus")
    with search_directory(plan):
        outcome = tune_search(plan, corpus)
    return report(plan, outcome)


@contextlib.contextmanager
def search_directory(plan: Plan) -> Iterator[None]:
    """The search's directory, made and locked for this process. A directory this command made (and the
    --results-dir folders it made for it, left empty) is removed where it ends before the manifest is written
    (a refusal, a failure, a Ctrl-C): nothing was run. So is one
    a killed start-up left (``plan.takeover``), taken over. Only while this process holds its lock: two commands
    can both find a name free (or a start-up's leftover), and the one refused the lock leaves the other's."""
    created = not plan.directory.exists() or plan.takeover
    made = [p for p in plan.directory.parents if not p.exists()]  # --results-dir's folders this command makes
    try:
        plan.directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SearchError(
            f"--results-dir {plan.directory.parent}: cannot create {plan.directory} ({exc.strerror or exc})"
        ) from None
    with SearchLock(plan.directory):  # refused: the directory is the other process's, whoever made it
        try:
            remove_interrupted_writes(plan)
            if plan.takeover:
                take_over(plan)
            if plan.mode is Mode.NEW:
                try:
                    shutil.copyfile(plan.space.path, plan.directory / SPACE_COPY)
                except OSError as exc:
                    raise StorageError(
                        f"{plan.directory}: the space file cannot be copied there ({describe_os_error(exc)})"
                    ) from None
            if plan.restore_state_from:
                restore_saved_state(plan)
            yield
        except BaseException:
            if created and not (plan.directory / MANIFEST_FILE).exists():  # under the lock: no one else is in it
                shutil.rmtree(plan.directory, ignore_errors=True)
                for folder in made:  # innermost first; one another search has written in meanwhile stays
                    with contextlib.suppress(OSError):
                        folder.rmdir()
            raise


def take_over(plan: Plan) -> None:
    """Clear what a start-up killed before its manifest left (plan.startup_leftover: nothing trained)."""
    print(
        f"note: {plan.directory} holds only what a start-up stopped before the search began left "
        "(no manifest.json, no trial): the search starts there anew",
        file=sys.stderr,
        flush=True,
    )
    (plan.directory / SPACE_COPY).unlink(missing_ok=True)
    if plan.storage == storage_url(plan.directory):  # its own database: possibly cut short as Optuna made it
        for name in (STUDY_FILE, f"{STUDY_FILE}-journal"):
            (plan.directory / name).unlink(missing_ok=True)


def remove_interrupted_writes(plan: Plan) -> None:
    """The temporary files of a table or manifest write that a killed driver left (``.NAME.<pid>.tmp``); under
    the lock, no other process writes them."""
    for name in (TRIALS_FILE, EPOCHS_FILE, MANIFEST_FILE):
        for tmp in plan.directory.glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)


def tune_search(plan: Plan, corpus: Corpus) -> Outcome:
    """Start Ray, open the study, record the run in the manifest, and run Ray Tune until the search ends."""
    print(describe_plan(plan), flush=True)
    set_ray_environment(plan)
    try:
        # A Ctrl-C that lands in a C extension's import (Ray's, pyarrow's) was lost there (a warning, and the search
        # ran on): each press until Tune's own handler takes over is noted and raised (runtime.interrupts_kept); one
        # from before the manifest records the run is raised before it does, so nothing is recorded
        with interrupts_kept():
            init_ray(plan)  # inside the try: a refusal after ray.init (no GPUs, say) still shuts Ray down
            plan.stopwatch.lap("ray_init")
            if plan.mode is Mode.RESUME:
                settle_unsaved_trials(plan)
            elif plan.mode is Mode.EXTEND:
                settle_lost_run(plan)
            started = dt.datetime.now().isoformat(timespec="seconds")
            from artune.search.recorder import Recorder  # Ray Tune's modules: imported once Ray is up
            from artune.search.tuner import BUDGET_END_S, build_tuner

            recorder = Recorder(plan)
            open_study(recorder, plan)
        with interrupts_kept():
            # a StorageError here: nothing has trained, and a new search's directory goes (search_directory)
            write_manifest(
                plan,
                corpus,
                {{Mode.NEW: "started", Mode.RESUME: "resumed", Mode.EXTEND: "extended"}[plan.mode]: started},
                new_command=True,
            )
            plan.stopwatch.lap("study")
            tuner = build_tuner(tuner_plan(plan), corpus, recorder)
            tuning_started = plan.stopwatch.lap("tuner")  # the searcher, the corpus into Ray's object store
            resume_collector()  # the start-up's objects (Ray Tune's modules, say) live to the end: artune/startup.py
        watch = ClusterWatch(plan) if plan.address else contextlib.nullcontext()
        with watch, ctrl_c_taken_by_tune() as pressed:
            try:
                tuner.fit()  # Ray Tune catches Ctrl-C itself: fit then returns with trials left unfinished
            except Exception:
                # Once the storage failed, fit's own end may fail on what it could not write (an empty error
                # file, say): the failure is known, and reported in one line.
                if not recorder.storage_failure:
                    raise
        finished = time.monotonic()
        budget_spent = bool(plan.time_budget_s) and finished - plan.started >= plan.time_budget_s - BUDGET_END_S - 1.0
        interrupted = recorder.finish(budget_spent)
        # a Ctrl-C between two trials left none unfinished, and the searcher's trials to come wait for --resume (one
        # after the last trial had ended, as Tune's loop wound down, came after the search's end)
        drawn, planned = len(recorder.run_trials), plan.space.settings.num_samples * plan.repeats
        between_trials = pressed.is_set() and not interrupted and not budget_spent and drawn < planned
        if not (interrupted or between_trials):
            timings = {
                **plan.stopwatch.phases,
                "startup_s": round(tuning_started - plan.started, 3),
                "tuning_s": round(finished - tuning_started, 3),
            }
            finished_at = {"finished": dt.datetime.now().isoformat(timespec="seconds")}
            # a resume that trained nothing (every trial had ended) keeps the timings of the run that did
            trained = plan.mode is not Mode.RESUME or bool(recorder.spent)
            try:
                write_manifest(plan, corpus, {**finished_at, "timings": timings} if trained else finished_at)
            except StorageError as exc:  # the tables hold every trial: reported as the storage failing, exit 4
                recorder.storage_fails(str(exc), in_loop=False)
    finally:
        cutoff = sys.modules.get("artune.search.cutoff")  # (imported with Ray Tune, once Ray is up)
        if cutoff is not None:
            cutoff.set_run_deadline(None)  # the searcher's cut-off is this run's: a notebook's next search has its own
        stop_ray()  # a no-op where ray.init never ran or failed
    elapsed = finished - plan.started
    return Outcome(interrupted, elapsed, recorder.spent, recorder.records, recorder.storage_failure, between_trials)


def tuner_plan(plan: Plan) -> Plan:
    """The plan Ray Tune's Tuner is built from: a resumed run that Tune never began (its driver was stopped in
    the start-up, before tuner.pkl) is begun anew, as the search's first run or as the extension it was."""
    if not plan.fresh_run:
        return plan
    print(f"the search's last run ({plan.run_name}) was stopped before Ray Tune began it: it starts anew", flush=True)
    return dataclasses.replace(plan, mode=Mode.NEW if plan.run_name == TUNE_DIR else Mode.EXTEND)


def open_study(recorder, plan: Plan) -> None:
    """Open the study before any trial ends, so that a database that cannot hold it is refused first."""
    try:
        recorder.study  # noqa: B018 - opened on first use
    except Exception as exc:  # noqa: BLE001 - whatever the database says, before the search has written anything
        own = plan.storage == storage_url(plan.directory)  # no --storage: the optuna.db in the search's directory
        where = f"{plan.directory / STUDY_FILE}" if own else f"--storage {plan.storage}"
        cause = sqlite_write_error(plan.storage)  # its directory full or read-only: the storage failing, exit 4
        if cause is not None:
            raise StorageError(
                f"{where}: the Optuna study cannot be written there ({describe_os_error(cause)})"
            ) from None
        first = first_line(exc)
        raise SearchError(f"{where}: the Optuna study cannot be opened there ({type(exc).__name__}: {first})") from None


def report(plan: Plan, outcome: Outcome) -> int:
    resume = plan.resume_command
    if outcome.storage_failure:
        print(
            f"error: the search's storage failed: {outcome.storage_failure}; the search stopped, its tables as last "
            f"written; once that is fixed, continue with: {resume}",
            file=sys.stderr,
        )
        return EXIT_STORAGE_FAILED
    if outcome.interrupted or outcome.between_trials or terminated():
        by = "terminated (SIGTERM)" if terminated() else "interrupted"
        left = f"{plural(outcome.interrupted, 'trial')} unfinished" if outcome.interrupted else "no trial was running"
        print(f"{by}: {left}; the tables hold every result so far; continue with: {resume}", file=sys.stderr)
        return EXIT_TERMINATED if terminated() else EXIT_INTERRUPTED
    summary, ok = summarise(plan)
    if plan.mode is Mode.RESUME and not outcome.spent:  # no trial started here: each had ended before
        print(
            f"nothing was left to resume: every trial of search {plan.name!r} had ended "
            "(--extend --num-samples N adds trials)"
        )
    print(summary)
    if plan.time_budget_s:
        print(budget_report(plan, outcome.elapsed_s, outcome.spent, outcome.records))
    if ok:
        print(next_steps(plan))  # last: what to run next
    return EXIT_OK if ok else EXIT_NO_TRIAL_SUCCEEDED
