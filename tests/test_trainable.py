"""train_fn on a real local Ray instance: per-epoch reports, checkpoints, resume, GPU requests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
from ray import tune  # noqa: E402

from artune.data import load_corpus  # noqa: E402
from artune.trainable import STAGING_PREFIX, remove_stale_staging, train_fn  # noqa: E402

TINY = dict(
    dataset="tiny_shakespeare",
    tokenizer="character",
    seq_len=16,
    batch_size=8,
    batches_per_epoch=25,
    d_model=32,
    n_layers=1,
    n_heads=2,
    optimizer="adamw",
    lr=3e-3,
    sample_tokens=4,
    device="cpu",
    seed=3,
)


@pytest.fixture(scope="module")
def corpus(shakespeare_path):
    return load_corpus(str(shakespeare_path), "character")


@pytest.fixture(scope="module")
def ray_local(ray_env_restored):
    # One logical GPU: Ray schedules on it as on a real one; torch here sees no CUDA.
    # address="local": a private instance, never the cluster a `ray start` on this machine left running.
    ray.init(
        address="local",
        num_cpus=2,
        num_gpus=1,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
    )
    yield
    ray.shutdown()


def run_tuner(tmp_path, corpus, param_space, *, resources=None, callbacks=(), max_failures=0, name="t"):
    trainable = tune.with_parameters(train_fn, corpus=corpus)
    if resources:
        trainable = tune.with_resources(trainable, resources)
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(num_samples=1),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(tmp_path),
            verbose=0,
            callbacks=list(callbacks),
            failure_config=tune.FailureConfig(max_failures=max_failures),
        ),
    )
    return tuner.fit()


def test_train_fn_outside_tune_returns_one_metrics_dict_per_epoch(corpus):
    history = train_fn({**TINY, "epochs": 2}, corpus=corpus)
    assert [m["epoch"] for m in history] == [1, 2]
    assert history[1]["valid_loss"] < history[0]["valid_loss"] + 0.5


def test_train_fn_ends_at_its_deadline_keeping_the_epochs_it_reported(corpus, monkeypatch):
    import functools

    import artune.train
    from tests.test_train import Clock

    # on a clock the test controls (0.1 s a look, a step is one look: an epoch of 200 steps is about 20 s), so
    # that how many epochs the deadline holds does not depend on the machine
    monkeypatch.setattr(artune.train, "Trainer", functools.partial(artune.train.Trainer, clock=Clock(tick=0.1)))
    history = train_fn({**TINY, "epochs": 50, "batches_per_epoch": 200}, corpus=corpus, deadline=50.0)
    assert 0 < len(history) < 50 and [m["epoch"] for m in history] == list(range(1, len(history) + 1))
    assert train_fn({**TINY, "epochs": 2}, corpus=corpus, deadline=0.0) == []  # past: nothing trains


def test_a_diverged_trial_reports_every_metric_a_search_can_rank_by(corpus):
    """The searcher reads the search's metric from each result: a diverged trial's must hold it too (as NaN)."""
    import math

    from artune.spaces import METRICS

    (metrics,) = train_fn({**TINY, "lr": 1e6, "grad_norm_clip": 1e9, "optimizer": "adamw"}, corpus=corpus)
    assert metrics["diverged"] and all(math.isnan(metrics[name]) for name in METRICS), metrics


def test_train_fn_unknown_key_names_it(corpus):
    from artune.config import ConfigError

    with pytest.raises(ConfigError, match="d_modle.*did you mean 'd_model'"):
        train_fn({**TINY, "d_modle": 64}, corpus=corpus)


def test_reports_every_epoch_with_a_checkpoint(ray_local, tmp_path, corpus):
    grid = run_tuner(tmp_path, corpus, {**TINY, "epochs": 3})
    result = grid[0]
    assert result.error is None
    df = result.metrics_dataframe
    assert df["epoch"].tolist() == [1, 2, 3]
    assert df["training_iteration"].tolist() == [1, 2, 3]
    reported = (
        "train_loss",
        "train_accuracy",
        "valid_loss",
        "valid_accuracy",
        "tokens_seen",
        "tokens_per_sec",
        "lr",
        "sample",
    )
    for key in reported:
        assert key in df.columns
    assert result.checkpoint is not None
    with result.checkpoint.as_directory() as directory:
        assert os.path.getsize(os.path.join(directory, "checkpoint.pt")) > 0


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    return int(proc.stdout)


def test_a_starting_trial_removes_the_checkpoint_staging_of_dead_trial_processes(ray_local, tmp_path, corpus):
    # what a worker killed inside tune.report leaves behind: its staged copy of the checkpoint
    host = socket.gethostname()
    stale = Path(tempfile.gettempdir()) / f"{STAGING_PREFIX}{dead_pid()}@{host}-abc123"
    (stale / "checkpoint.pt").parent.mkdir()
    (stale / "checkpoint.pt").write_bytes(b"x" * 1000)
    assert run_tuner(tmp_path, corpus, {**TINY, "epochs": 1})[0].error is None
    assert not stale.exists()
    # what stays: a running process's staging, and another host's (its pids are not this host's)
    live = tmp_path / f"{STAGING_PREFIX}{os.getpid()}@{host}-def456"
    elsewhere = tmp_path / f"{STAGING_PREFIX}{dead_pid()}@other-host-ghi789"
    live.mkdir(), elsewhere.mkdir()
    assert remove_stale_staging(str(tmp_path)) == [] and live.exists() and elsewhere.exists()


class KillOnce(tune.Callback):
    """SIGKILLs one trial's worker once (the trial with ``seed``), right after Tune registered its
    epoch ``epoch`` checkpoint: a real crash, landing while the next epoch trains."""

    def __init__(self, epoch: int, seed: int) -> None:
        self.epoch, self.seed, self.killed = epoch, seed, False
        self.epochs_seen: dict[int, list[int]] = {}
        self.failures: dict[int, int] = {}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.epochs_seen.setdefault(trial.config["seed"], []).append(result["epoch"])

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        if not self.killed and trial.config["seed"] == self.seed and trial.last_result.get("epoch") == self.epoch:
            self.killed = True
            os.kill(trial.last_result["pid"], signal.SIGKILL)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.failures[trial.config["seed"]] = trial.num_failures


def test_a_killed_trial_resumes_from_its_checkpoint_and_matches_an_unkilled_run(ray_local, tmp_path, corpus):
    config = {**TINY, "epochs": 4}
    expected = train_fn(config, corpus=corpus)  # the same seed, never interrupted
    killer = KillOnce(epoch=2, seed=TINY["seed"])
    grid = run_tuner(
        tmp_path, corpus, {**config, "seed": tune.grid_search([TINY["seed"], 11])}, callbacks=[killer], max_failures=2
    )
    assert killer.killed and not grid.errors
    # Resumed from epoch 2's checkpoint: epochs 1 and 2 are not trained again; one failure counted.
    assert killer.epochs_seen[TINY["seed"]] == [1, 2, 3, 4]
    assert killer.failures == {TINY["seed"]: 1, 11: 0}  # the other trial is untouched
    assert killer.epochs_seen[11] == [1, 2, 3, 4]
    result = next(r for r in grid if r.config["seed"] == TINY["seed"])
    assert result.metrics["training_iteration"] == 4 and result.metrics["epoch"] == 4
    assert result.metrics["valid_loss"] == pytest.approx(expected[-1]["valid_loss"], abs=1e-6)
    assert result.metrics["train_loss"] == pytest.approx(expected[-1]["train_loss"], abs=1e-6)


class RunningAtOnce(tune.Callback):
    """The most trials Tune had running at once, as its loop saw them at each step (its own scheduling, not the
    trials' clocks: Ray's result timestamps are whole seconds, too coarse for short trials' overlaps)."""

    def __init__(self) -> None:
        self.peak = 0

    def on_step_begin(self, iteration, trials, **info) -> None:
        self.peak = max(self.peak, sum(trial.status == "RUNNING" for trial in trials))


def test_half_gpu_trials_run_two_at_a_time_per_gpu(ray_local, tmp_path, corpus):
    """One GPU, 4 trials asking 0.5 GPU (and little CPU): exactly two run at any time."""
    trainable = tune.with_resources(tune.with_parameters(train_fn, corpus=corpus), {"cpu": 0.25, "gpu": 0.5})
    running = RunningAtOnce()
    tuner = tune.Tuner(
        trainable,
        # device: cpu is explicit, so the trials train on the CPU though Ray gave them a GPU
        param_space={**TINY, "epochs": 2, "batches_per_epoch": 60, "seed": tune.grid_search([1, 2, 3, 4])},
        tune_config=tune.TuneConfig(num_samples=1),
        run_config=tune.RunConfig(name="gpu", storage_path=str(tmp_path), verbose=0, callbacks=[running]),
    )
    grid = tuner.fit()
    assert not grid.errors and len(grid) == 4
    assert running.peak == 2, f"expected two trials at a time on one GPU, got {running.peak}"


def test_a_gpu_trial_without_cuda_fails_with_a_clear_error(ray_local, tmp_path, corpus):
    grid = run_tuner(
        tmp_path, corpus, {**TINY, "device": "auto", "epochs": 1}, resources={"cpu": 1, "gpu": 0.5}, name="nocuda"
    )
    error = grid[0].error
    assert error is not None
    assert "allocated GPU" in str(error) and "torch sees no CUDA device" in str(error)
