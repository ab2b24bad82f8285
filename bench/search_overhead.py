"""The search's overhead: the wall time of a real search against the trials' own training time.

A search of ``trials`` short trials (3 epochs of about 5 s each), ``concurrency`` at a time, runs through the
real CLI (``python -m artune.search``, a subprocess on a private local Ray instance it starts itself). The
ideal wall time is the sum of the trials' own training time (the ``seconds`` of every epoch:
training, validation and the sample) divided by the concurrency; the ratio is the overhead.
Two figures: the whole command (Ray's start included) and the tuning alone (Tuner.fit). Where the
rest goes: the command's start-up phases (its manifest's timings), its end (Ray's shutdown, the
summary), and each trial's own set-up before its first epoch, in a new worker process and in a reused
one (from Ray's per-trial result files: the first iteration's time less the epoch's own seconds).

An epoch's length is set by measurement, not guessed: ``calibrate`` times two short epochs of the
trial's model in this process (one thread, as a trial has) and picks the batches per epoch that
make an epoch last ``epoch_s`` here. A fixed number of batches drifted with the machine's speed
(2.9-3.6 s epochs in one week, 5 s in another), and shorter epochs make the same overhead a larger
ratio.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import fmean

REPO = Path(__file__).resolve().parent.parent


# Every trial's fixed knobs (its lr is sampled): a small model, so that an epoch is mostly training.
FIXED = dict(
    seq_len=64, batch_size=12, d_model=64, n_layers=2, n_heads=4, optimizer="adamw", sample_tokens=10, device="cpu"
)


def space_text(trials: int, concurrency: int, batches_per_epoch: int) -> str:
    import yaml

    return yaml.safe_dump(
        {
            "search": {
                "num_samples": trials,
                "max_concurrent": concurrency,
                "resources": {"cpu": 1},
                "epochs": 3,
                "sampler": "random",
                "seed": 0,
                "scheduler": "none",
            },
            "fixed": {**FIXED, "batches_per_epoch": batches_per_epoch},
            "params": {"lr": {"loguniform": [1.0e-3, 3.0e-3]}},
        },
        sort_keys=False,
    )


def calibrate(epoch_s: float, short: int = 20, long: int = 80) -> int:
    """Batches per epoch for an epoch of about ``epoch_s`` seconds of a trial's model, on one thread.

    An epoch is a fixed part (the validation pass, the sample) plus a part per batch: two epochs of
    ``short`` and ``long`` batches, timed after an untimed one, give both.
    """
    import torch

    from artune.config import TrainConfig
    from artune.data import load_corpus
    from artune.train import Trainer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        corpus = load_corpus("tiny_shakespeare", "character", os.environ.get("ARTUNE_DATA_DIR"))
        seconds = {}
        for batches in (short, short, long):
            trainer = Trainer(TrainConfig(**FIXED, batches_per_epoch=batches, epochs=1, is_save_models=False), corpus)
            seconds[batches] = trainer.run_epoch()["seconds"]
    finally:
        torch.set_num_threads(threads)
    per_batch = max(1e-4, (seconds[long] - seconds[short]) / (long - short))
    fixed = max(0.0, seconds[short] - short * per_batch)
    return max(10, round((epoch_s - fixed) / per_batch))


def measure(trials: int = 8, concurrency: int = 2, epoch_s: float = 5.0, batches_per_epoch: int | None = None) -> dict:
    import pyarrow.parquet as pq

    from artune.results import TUNE_DIR

    if batches_per_epoch is None:
        batches_per_epoch = calibrate(epoch_s)
    with tempfile.TemporaryDirectory(prefix="artune-bench-") as tmp:
        space = Path(tmp) / "overhead.yaml"
        space.write_text(space_text(trials, concurrency, batches_per_epoch))
        start = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "artune.search", str(space), "--results-dir", tmp, "--name", "overhead"],
            cwd=REPO,
            capture_output=True,
            text=True,
            env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
        )
        wall = time.monotonic() - start
        if result.returncode != 0:
            raise RuntimeError(f"the search failed:\n{result.stderr[-2000:]}")
        directory = Path(tmp) / "overhead"
        epochs = pq.read_table(directory / "epochs.parquet").to_pandas()
        manifest = json.loads((directory / "manifest.json").read_text())
        setup = trial_setup_seconds(directory / TUNE_DIR)
    train_seconds = float(epochs["seconds"].sum())
    ideal = train_seconds / concurrency
    timings = manifest["timings"]
    tuning, startup = timings["tuning_s"], timings["startup_s"]
    return {
        "trials": trials,
        "concurrency": concurrency,
        "epochs_per_trial": 3,
        "batches_per_epoch": batches_per_epoch,
        "mean_epoch_s": float(epochs["seconds"].mean()),
        "wall_s": wall,
        "tuning_s": tuning,
        "startup_s": startup,
        "startup_phases_s": {k: v for k, v in timings.items() if k not in ("startup_s", "tuning_s")},
        "end_s": wall - startup - tuning,  # Ray's shutdown, the summary (and the interpreter's own start)
        **setup,
        "ideal_s": ideal,
        "ratio": wall / ideal,
        "tuning_ratio": tuning / ideal,
    }


def trial_setup_seconds(tune_dir: Path) -> dict:
    """A trial's set-up inside its worker before its first epoch: in a new worker process, in a reused one."""
    firsts = []
    for path in sorted(tune_dir.glob("*/result.json")):
        first = json.loads(path.read_text().splitlines()[0])
        firsts.append((first["timestamp"], first["pid"], first["time_this_iter_s"] - first["seconds"]))
    seen, new, reused = set(), [], []
    for _, pid, setup in sorted(firsts):
        (reused if pid in seen else new).append(setup)
        seen.add(pid)
    return {
        "trial_setup_new_worker_s": fmean(new) if new else math.nan,
        "trial_setup_reused_worker_s": fmean(reused) if reused else math.nan,
    }


if __name__ == "__main__":
    print(json.dumps(measure(), indent=2))
