"""What a search prints: its plan before it starts, and its outcome and time budget after it ends."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from artune import plural
from artune.compat import ray_auto_address
from artune.errors import ResultsError
from artune.humanize import show_knob
from artune.results import DEFAULT_RESULTS_DIR, EPOCHS_FILE, MANIFEST_FILE, TRIALS_FILE
from artune.search.manifest import run_number
from artune.search.plan import SPACE_COPY, Mode, Plan

SHORT_BUDGET_S = 60.0  # a time budget under this is warned of: start-up alone takes seconds
MLFLOW_DIR = "mlruns"  # in the search's directory: MLflow's file store, where MLFLOW_TRACKING_URI names none

if TYPE_CHECKING:
    from artune.results import TrialRecord


def trial_resources(workers: int, cpu: float, gpu: float) -> str:
    """``1 CPU, 0 GPU``, or for a data-parallel trial ``2 workers x (1 CPU, 0 GPU), data-parallel``."""
    each = f"{cpu:g} CPU, {gpu:g} GPU"
    return each if workers == 1 else f"{workers} workers x ({each}), data-parallel"


MODE_NOTE = {Mode.NEW: "", Mode.RESUME: " (resume)", Mode.EXTEND: " (extend: run {run})"}


def describe_plan(plan: Plan, dry_run: bool = False) -> str:
    s = plan.space.settings
    run = run_number(plan.run_name)
    local = "that it would start" if dry_run else "started"
    where = f"a local Ray instance {local} here (127.0.0.1, dashboard off)"
    if plan.address == "auto":  # RAY_ADDRESS's cluster, else the one `ray start` runs on this machine
        given = "--address auto" if plan.address_label == "--address" else f"{plan.address_label}=auto"
        try:
            found = ray_auto_address()  # (the plan found it: None only where Ray's lookup has moved)
        except LookupError:  # gone since
            found = None
        where = f"the Ray cluster at {found} ({given})" if found else f"the Ray cluster Ray finds ({given})"
    elif plan.address:
        where = f"the Ray cluster at {plan.address}"
    concurrency = plan.concurrency()  # the cluster's slots are known once Ray has started
    if concurrency is None:
        concurrency = "the cluster's trial slots"
    elif plan.repeats > 1:
        concurrency = f"{concurrency} configurations' groups, as many of their trials as the slots hold"
    lines = [
        f"search {plan.name!r}{MODE_NOTE[plan.mode].format(run=run)} on {where}",
        plan.space.describe(run, plan.repeats),
        f"trial resources: {trial_resources(s.workers, s.cpu, s.gpu)}; concurrency: {concurrency}",
    ]
    if plan.repeats > 1:
        lines.append(
            f"repeats: each sampled configuration runs {plan.repeats} times (the trainer's seed, seed + 1, ...): "
            f"{s.num_samples * plan.repeats} trials in all; the sampler sees their mean"
        )
    files = f"{TRIALS_FILE}, {EPOCHS_FILE}, {MANIFEST_FILE}, {SPACE_COPY}, {plan.run_name}/"
    lines += [f"writes: {plan.directory}/ ({files})", f"Optuna study: {plan.name!r} in {plan.storage}"]
    if "tensorboard" in s.log:
        lines.append(f"TensorBoard: event files in each trial's directory (tensorboard --logdir {plan.directory})")
    if "mlflow" in s.log:
        lines.append(f"MLflow: experiment {plan.name!r} in {mlflow_tracking_uri(plan)}")
    if plan.restore_state_from:
        lines.append(f"restores Ray Tune's saved state (cut short by a killed driver) from {plan.restore_state_from}")
    if plan.time_budget_s and plan.time_budget_s < SHORT_BUDGET_S:
        lines.append(
            f"warning: a time budget of {plan.time_budget_s:g} s is under a minute, start-up included: the trials may "
            "end before their first epoch"
        )
    return "\n".join(lines)


def summarise(plan: Plan) -> tuple[str, bool]:
    """The search's outcome in a few lines, read back from its tables; and whether any trial succeeded."""
    from artune.results import load

    results = load(plan.directory)
    trials = results.trials
    counts = trials["status"].value_counts().to_dict()
    trained = trials["status"].isin(("completed", "stopped")) & (trials["epochs_completed"] > 0)
    ok = bool(trained.any())
    statuses = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    lines = [f"search {plan.name}: {plural(len(trials), 'trial')} ({statuses})"]
    best = results.best(1)
    if len(best):
        row = best.iloc[0]
        # every run's searched knobs (an --extend may fix one its first run searched): the manifest's
        try:
            params = results.params
        except ResultsError:  # a manifest edited by hand: this run's, as before
            params = list(plan.space.params)
        knobs = ", ".join(f"{k}={show_knob(row[k])}" for k in params if k in row)
        column, _ = results.metric_column()
        lines.append(
            f"best trial {row['trial_id']}: {column.replace('_', ' ', 1)} {row[column]:.4f} after "
            f"{plural(int(row['epochs_completed']), 'epoch')} ({knobs})"
        )
        sample = results.epochs[results.epochs.trial_id == row["trial_id"]].sort_values("epoch")["sample"]
        if len(sample):
            lines.append(f"its last sample: {sample.iloc[-1]!r}")
    if not len(trials) or not (trials["epochs_completed"] > 0).any():
        why = [f"the error column of {plan.directory / TRIALS_FILE} says why trials failed"] * bool(counts.get("error"))
        why += ["trials diverged: their loss went NaN or infinite"] * bool(counts.get("diverged"))
        why += ["a longer --time-budget gives the trials time to"] * bool(plan.time_budget_s)
        lines.append("no trial trained an epoch: no result" + (f" ({'; '.join(why)})" if why else ""))
    lines.append(
        f"results: {plan.directory / TRIALS_FILE}, {plan.directory / EPOCHS_FILE}, {plan.directory / MANIFEST_FILE}"
    )
    return "\n".join(lines), ok


def next_steps(plan: Plan) -> str:
    """The commands that go on from a finished search: its best model, its figures, a notebook."""
    # A search under the default results directory goes by its name; elsewhere, by its directory.
    default = plan.directory.parent.resolve() == Path(DEFAULT_RESULTS_DIR).resolve()
    search = plan.name if default else str(plan.directory)
    quoted = shlex.quote(search)
    return "\n".join(
        [
            "next:",
            f'  python -m artune.sample {quoted} --prompt "ROMEO:"   # text from the best trial\'s best checkpoint',
            f"  python -m artune.results {quoted}   # the summary and the figures, written beside the tables",
            f"  in a notebook: from artune.results import load; r = load({search!r}); r.best(5)",
        ]
    )


def mlflow_tracking_uri(plan: Plan) -> str:
    """Where ``--log mlflow`` logs: the server or store MLFLOW_TRACKING_URI names, else the search's mlruns/."""
    return os.environ.get("MLFLOW_TRACKING_URI") or (plan.directory / MLFLOW_DIR).resolve().as_uri()


def budget_report(plan: Plan, elapsed: float, spent: dict[str, list[float]], records: dict[str, TrialRecord]) -> str:
    """How this command's time budget was spent: each trial that ran in it, with the epochs it trained
    in it and their seconds (a resumed or extended search's earlier runs had budgets of their own)."""
    budget = plan.time_budget_s
    lines = [f"time budget {budget:.0f} s: used {elapsed:.0f} s ({elapsed / budget:.0%})"]
    for trial_id, seconds in sorted(spent.items(), key=lambda item: -sum(item[1])):
        total, epochs = sum(seconds), plural(len(seconds), "epoch")
        if not seconds:  # it ran, but the budget ended it before its first epoch did
            lines.append(f"  {trial_id}  {records[trial_id].status:<9} no whole epoch: the budget ended its first")
            continue
        lines.append(
            f"  {trial_id}  {records[trial_id].status:<9} {epochs:>10}  {total:7.1f} s  "
            f"({total / budget:.1%} of the budget)"
        )
    return "\n".join(lines)
