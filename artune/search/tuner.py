"""The Ray Tune Tuner of a search: train_fn with its resources, OptunaSearch, ASHA, the budget, the callbacks."""

from __future__ import annotations

import os
import sys
import time
import warnings
from typing import TYPE_CHECKING, Any

import ray
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter, Repeater
from ray.tune.search.optuna import OptunaSearch

from artune.compat import forget_ended_running_trials, give_restored_tuner, repoint_searcher_state
from artune.search.cutoff import BudgetCutoff, set_run_deadline
from artune.search.manifest import run_number
from artune.search.plan import Mode
from artune.search.recorder import ENDED
from artune.search.report import mlflow_tracking_uri
from artune.search.saved_state import saved_trials
from artune.study import warm_start_storage
from artune.trainable import PLACEMENT_GROUP_KEY, Workers, train_fn

if TYPE_CHECKING:
    from artune.data import Corpus
    from artune.search.plan import Plan
    from artune.search.recorder import Recorder
    from artune.spaces import SearchSpace

MAX_FAILURES = 2  # retries of a trial that raised, each from its last checkpoint
BUDGET_END_S = 2.0  # of a time budget, kept for the end: Tune's, the final tables, Ray's shutdown
DEADLINE_LAG_S = 0.5  # running trials end this long after Tune's budget has stopped the search


def build_tuner(plan: Plan, corpus: Corpus, recorder: Recorder) -> tune.Tuner:
    """A new Tuner for the plan's run, or the interrupted one restored (``--resume``)."""
    s = plan.space.settings
    time_budget = deadline = None
    if plan.time_budget_s:
        # Start-up counts too, and so does the end (Tune's, the tables, Ray's shutdown). Tune's
        # budget stops the search (no new trial) a moment before the running trials' deadline
        # ends them: Tune's own stop of a running trial waits for its next report.
        time_budget = max(1.0, plan.time_budget_s - (time.monotonic() - plan.started) - BUDGET_END_S)
        deadline = time.time() + time_budget + DEADLINE_LAG_S
    set_run_deadline(deadline)  # the searcher starts no trial this run's budget would end before its first rung
    # A trial Tune's saved state would continue, though the tables saw it end after Tune last saved it
    # (a killed driver): it is not trained again.
    resume = plan.mode is Mode.RESUME
    ended = frozenset(tid for tid, r in recorder.records.items() if r.status in ENDED) if resume else frozenset()
    workers = Workers(s.workers, s.cpu, s.gpu, s.metric, s.mode, run_path=str(plan.tune_path))
    trainable = tune.with_resources(
        tune.with_parameters(train_fn, corpus=corpus, deadline=deadline, ended=ended, workers=workers),
        trial_resources(plan.space),
    )
    # Each trial's params.json, result.json and progress.csv, then the recorder, then the trackers --log names.
    # Ray's loggers first: a trial's files exist before the recorder opens its Optuna trial, so a driver killed
    # in between leaves what --resume needs to give that trial its row.
    callbacks = [JsonLoggerCallback(), CSVLoggerCallback(), recorder, *trackers(plan)]
    if s.workers > 1:
        callbacks.append(WorkerGroupCleanup())
    # ASHA takes a percentile of each rung's results, NaNs left out: a rung that holds only a diverged
    # trial's NaN makes numpy warn on the driver's stderr, though nothing is wrong (that trial has ended).
    warnings.filterwarnings("ignore", message="All-NaN slice encountered", category=RuntimeWarning)
    # A trial that trains an epoch again (a retry, or a resume, from its last checkpoint) reports that epoch again:
    # OptunaSearch's own study keeps the first value and warns; artune's tables and study take the new one.
    warnings.filterwarnings("ignore", message="The reported value is ignored because this", category=UserWarning)
    if resume:
        repoint_searcher_state(plan.tune_path)
        forget_stale_running_trials(plan)
        tuner = tune.Tuner.restore(str(plan.tune_path), trainable, resume_unfinished=True, resume_errored=True)
        give_restored_tuner(tuner, callbacks, time_budget)
        return tuner
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=s.metric,
            mode=s.mode,
            search_alg=searcher(plan, recorder),
            scheduler=scheduler(plan.space),
            num_samples=s.num_samples * plan.repeats,
            time_budget_s=time_budget,
            trial_dirname_creator=lambda trial: trial.trial_id,
            # A finished trial's worker takes the next trial of the same resources: no new process,
            # no re-import of torch, no second fetch of the corpus (bench search). A data-parallel trial's
            # workers are Ray Train's, which go with the trial's process: that process is not kept.
            reuse_actors=s.workers == 1,
        ),
        run_config=tune.RunConfig(
            name=plan.run_name,
            storage_path=str(plan.directory),
            verbose=0,
            callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
            # Each trial's two best checkpoints by the search's metric, and its latest (which Ray never
            # deletes): the best model of a search is always on disk. Two, not one: Tune's saved state may
            # lag a report, and name the checkpoint before the latest, which a resume must still find (with
            # one kept, a falling loss deleted it at once; a killed driver's resume then failed).
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute=s.metric, checkpoint_score_order=s.mode
            ),
        ),
    )


def forget_stale_running_trials(plan: Plan) -> None:
    """The saved searcher made to wait for no trial that Tune's saved state holds as ended (compat.py says how a
    kill or a full disk leaves it so); one line where it did."""
    saved = saved_trials(plan.tune_path)
    if not saved:
        return
    forgotten = forget_ended_running_trials(
        plan.tune_path, frozenset(tid for tid, status in saved.items() if status != "TERMINATED")
    )
    if forgotten:
        print(
            f"warning: Ray Tune's saved searcher still counted {len(forgotten)} trial(s) as running that its saved "
            f"state holds as ended ({', '.join(sorted(forgotten))}: the driver stopped between Tune's copies of the "
            "two); the resume does not wait for them",
            file=sys.stderr,
            flush=True,
        )


def trackers(plan: Plan) -> list[Any]:
    """Ray Tune's own logger callbacks for the trackers ``log`` names: every epoch's metrics, each trial's knobs."""
    callbacks: list[Any] = []
    if "tensorboard" in plan.space.settings.log:
        from ray.tune.logger import TBXLoggerCallback

        callbacks.append(TBXLoggerCallback())  # event files in each trial's directory, beside its result.json
    if "mlflow" in plan.space.settings.log:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        uri = mlflow_tracking_uri(plan)
        if uri.startswith("file:"):
            # MLflow 3 keeps its file store in maintenance mode and refuses it unless this is set; results/<name>/
            # mlruns travels with the search's other files, where a tracking server needs no set-up
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        callbacks.append(MLflowLoggerCallback(tracking_uri=uri, experiment_name=plan.name))
    return callbacks


def searcher(plan: Plan, recorder: Recorder) -> Any:
    """OptunaSearch over the space, as many trials at a time as ``Plan.concurrency`` says; each config ``repeats``
    times."""
    s = plan.space.settings
    # The searcher's own in-memory study; with --extend it starts out holding every earlier trial,
    # so the sampler is warm-started from the search's whole history.
    storage, warm = warm_start_storage(recorder.records.values(), plan.space, plan.name)
    if warm:
        print(f"sampler warm-started from {warm} earlier trials", flush=True)
    search = OptunaSearch(
        space=plan.space.define_by_run,
        metric=s.metric,
        mode=s.mode,
        sampler=plan.space.make_sampler(run_number(plan.run_name)),
        storage=storage,
        study_name=plan.name,
    )
    limited: Any = ConcurrencyLimiter(
        search, max_concurrent=plan.concurrency(trial_slots(plan.space, ray.cluster_resources()))
    )
    if plan.repeats > 1:
        # each sampled config runs `repeats` times (seeds seed, seed+1, ...); the sampler sees their mean
        limited = Repeater(limited, repeat=plan.repeats, set_index=True)
    return BudgetCutoff(limited, grace_period=s.grace_period if s.scheduler == "asha" else 1)


def scheduler(space: SearchSpace) -> Any:
    s = space.settings
    if s.scheduler == "asha":
        return ASHAScheduler(
            time_attr="training_iteration",
            max_t=s.epochs,
            grace_period=s.grace_period,
            reduction_factor=s.reduction_factor,
        )
    return FIFOScheduler()


# What a data-parallel trial's own process reserves: it only waits on Ray Train's workers, which hold
# theirs. Tune refuses a trial of no resources at all, and any CPU it took would be one the workers lack.
DATA_PARALLEL_TRIAL = {"cpu": 0, "gpu": 0, "memory": 1}  # one byte


def trial_resources(space: SearchSpace) -> dict[str, float]:
    """What Tune reserves for each trial's process: the trial's resources, or next to none where Ray Train's
    workers (each with ``cpu`` and ``gpu``) do the training."""
    s = space.settings
    if s.workers > 1:
        return DATA_PARALLEL_TRIAL
    return {"cpu": s.cpu, "gpu": s.gpu}


def trial_slots(space: SearchSpace, resources: dict[str, float]) -> int:
    """How many trials of the space's resources (every worker's) the cluster holds at once."""
    s = space.settings
    slots = int(resources.get("CPU", 1) // (s.cpu * s.workers))
    if s.gpu > 0:
        slots = min(slots, int(resources.get("GPU", 0) // (s.gpu * s.workers)))
    return max(1, slots)


class WorkerGroupCleanup(tune.Callback):
    """Removes the placement group of a data-parallel trial's workers once Tune has ended the trial.

    Tune ends a trial (ASHA's stop, its last epoch, a failure) by ending its process, and with it Ray Train's
    controller, before the controller has removed its workers' placement group; Ray Train's own cleaner
    finds a dead controller through the dashboard's state API, which a search started without a dashboard
    lacks. The group would hold its CPUs (and GPUs) for good, and the next trial's workers would wait on them.
    """

    def __init__(self) -> None:
        self.groups: dict[str, str] = {}  # trial id -> the hex id its rank 0 last reported

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if result.get(PLACEMENT_GROUP_KEY):
            self.groups[trial.trial_id] = result[PLACEMENT_GROUP_KEY]

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.remove(trial.trial_id)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.remove(trial.trial_id)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.remove(trial.trial_id)

    def remove(self, trial_id: str) -> None:
        from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

        hex_id = self.groups.pop(trial_id, None)
        if hex_id is None:
            return
        group = PlacementGroup(ray.PlacementGroupID.from_hex(hex_id))
        try:
            if placement_group_table(group).get("state") != "REMOVED":
                remove_placement_group(group)
        except Exception:  # noqa: BLE001 - removed meanwhile by Ray Train itself: nothing left to free
            pass
