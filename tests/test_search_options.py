"""``--repeats`` (replicates of each sampled config) and ``--time-budget``, through the real CLI."""

from __future__ import annotations

import json
import math
import time

import pytest

from artune.results import load
from tests.test_search import SMOKE, assert_one_error_line, cli


@pytest.mark.slow
def test_repeats_run_each_config_with_consecutive_seeds_and_aggregate(tmp_path, shakespeare_path):
    result = cli(
        str(SMOKE),
        "--results-dir",
        str(tmp_path),
        "--name",
        "reps",
        "--data",
        str(shakespeare_path),
        "--num-samples",
        "2",
        "--repeats",
        "2",
        "--set",
        "batches_per_epoch=10",
        "--set",
        "seed=7",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = load(tmp_path / "reps")
    trials = results.trials
    assert len(trials) == 4
    groups = trials.groupby("config_id")
    assert groups.ngroups == 2 and set(groups.size()) == {2}
    for _, group in groups:
        assert sorted(group["seed"]) == [7, 8]
        knobs = group.drop(
            columns=[
                "trial_id",
                "seed",
                "status",
                *[c for c in group if c.startswith(("best_", "last_"))],
                "epochs_completed",
                "tokens_per_sec",
                "seconds",
                "error",
            ]
        )
        assert len(knobs.drop_duplicates()) == 1, "the replicates of a config differ in a knob other than the seed"
    aggregated = results.aggregate()
    assert len(aggregated) == 2 and set(aggregated["count"]) <= {1, 2}
    for config, row in aggregated.set_index("config_id").iterrows():
        values = trials.loc[trials.config_id == config, "best_valid_loss"].dropna()
        assert row["mean"] == pytest.approx(values.mean())


def machine_pace(tmp_path, shakespeare_path, batches: int) -> tuple[float, float, float]:
    """This machine's pace for the budget test, from one trial of one epoch of ``batches`` batches through the
    CLI: the whole command's seconds, the epoch's seconds, and the command's time outside its start-up and
    tuning (the interpreter's imports before its clock starts, Ray's shutdown and the summary after)."""
    start = time.monotonic()
    result = cli(
        str(SMOKE),
        *("--results-dir", str(tmp_path), "--name", "pace", "--data", str(shakespeare_path)),
        *("--num-samples", "1", "--epochs", "1", "--set", f"batches_per_epoch={batches}"),
    )
    wall = time.monotonic() - start
    assert result.returncode == 0, result.stderr[-3000:]
    timings = json.loads((tmp_path / "pace" / "manifest.json").read_text())["timings"]
    epoch_s = float(load(tmp_path / "pace").epochs["seconds"].max())
    return wall, epoch_s, wall - timings["startup_s"] - timings["tuning_s"]


@pytest.mark.slow
def test_time_budget_ends_the_search_and_reports_the_budget_spent(tmp_path, shakespeare_path):
    # Epochs of several seconds: at the budget the running trials are mid-epoch. Tune's own stop of such a
    # trial waits for its next report (then kills it 15 s later); the trials' deadline ends them at once. The
    # budget and the epochs follow this machine's pace, measured first: a fixed budget that held an epoch on one
    # machine held none on a slower one.
    wall, epoch_s, outside_s = machine_pace(tmp_path, shakespeare_path, batches=1500)
    slack = outside_s + 3.0  # what the command takes outside its budget, and a margin for the machine's noise
    # epochs longer than the slack (what a wait for the next report would cost shows), at least 1500 batches
    batches = max(1500, math.ceil(1500 * 2 * slack / epoch_s))
    epoch_s *= batches / 1500
    budget = math.ceil(wall - outside_s + epoch_s * 2.5)  # a trial's start-up and first epoch, then 1.5 epochs more
    # The pace was one trial's alone, and the machine's can change more than 2x between two minutes (another job's
    # load; two trials at once on one core, pinned): a budget in which no trial finished an epoch (exit 1, "no trial
    # trained an epoch") is tried again under a new name with twice the budget.
    for attempt in range(3):
        name = f"budget{attempt}"
        result = cli(
            str(SMOKE),
            *("--results-dir", str(tmp_path), "--name", name, "--data", str(shakespeare_path)),
            *("--num-samples", "50", "--epochs", "20", "--set", f"batches_per_epoch={batches}"),
            *("--time-budget", f"{budget}s"),
            timeout=budget + 900,  # a hang guard only: the budget follows this machine's pace
        )
        if not (result.returncode == 1 and "no trial trained an epoch" in result.stdout) or attempt == 2:
            break
        budget *= 2
    assert result.returncode == 0, result.stderr[-3000:]
    # The budget holds the command's start-up and its tuning (the driver's own clock, in the manifest); the time
    # outside them (the interpreter's imports, Ray's shutdown) moves with the machine's load, so it is left out
    # here. Past the budget: Tune's stop of the trials its deadline ended, in at most the time the command spent
    # outside its clock in the pace run (at least 3 s); a wait for a trial's next report would cost more, as the
    # epochs are at least twice that.
    timings = json.loads((tmp_path / name / "manifest.json").read_text())["timings"]
    spent = timings["startup_s"] + timings["tuning_s"]
    assert spent < budget + max(3.0, outside_s), (
        f"the search spent {spent:.1f} s of a {budget} s budget (epochs of {epoch_s:.0f} s, {outside_s:.1f} s outside)"
    )
    assert f"time budget {budget} s: used " in result.stdout
    assert "of the budget)" in result.stdout and "best trial " in result.stdout
    results = load(tmp_path / name)
    assert 0 < len(results.trials) < 50
    budget_lines = {
        line.split()[0]: line for line in result.stdout.split(f"time budget {budget} s:")[1].splitlines()[1:]
    }
    for trial, epochs in zip(results.trials["trial_id"], results.trials["epochs_completed"]):
        trained = f" {int(epochs)} epoch{'' if epochs == 1 else 's'}  " if epochs else " no whole epoch: "
        assert trained in budget_lines[trial], budget_lines[trial]
    assert results.trials["best_valid_loss"].notna().any()


def test_repeats_are_refused_where_the_seed_is_searched(tmp_path, shakespeare_path):
    """A repeat runs its config with seed + k: with the seed searched, the study was given seeds it never
    sampled (or a ValueError inside Tune's callback, failing trials that had trained)."""
    space = tmp_path / "seeded.yaml"
    space.write_text(
        "search: {num_samples: 2, epochs: 1}\nfixed: {d_model: 16, n_layers: 1, n_heads: 2}\n"
        "params:\n  seed: {choice: [0, 1]}\n"
    )
    args = [str(space), "--results-dir", str(tmp_path / "r"), "--data", str(shakespeare_path), "--dry-run"]
    assert_one_error_line(
        cli(*args, "--repeats", "2"), "--repeats 2: ", f"but seed is searched ({space}: params.seed): fix the seed"
    )
    assert cli(*args).returncode == 0  # alone, a searched seed is fine
