"""A small finished search on disk, written through artune.results' own writer (no Ray, no torch).

Six trials over four searched knobs, one of every final status, and one config run twice with
different seeds (config_id "a"). The values are chosen so the expected answers are easy to state:

    trial  config  d_model  lr     optimizer  replace  seed  status     valid_loss per epoch   best
    t0     a       64       1e-3   adam       False    0     completed  2.5 2.0 1.8 1.7        1.7
    t1     a       64       1e-3   adam       False    1     completed  2.6 2.1 1.9 1.9        1.9
    t2     b       128      1e-2   adamw      True     0     stopped    2.4 2.2                2.2
    t3     c       32       1e-4   adam       False    0     completed  3.0 2.8 2.6 1.5        1.5  <- best
    t4     d       128      3e-2   adamw      True     0     diverged   2.9 (then NaN)         2.9
    t5     e       64       3e-4   adamw      False    0     error      (none)                 -
"""

from __future__ import annotations

from pathlib import Path

from artune.config import TrainConfig
from artune.results import MANIFEST_FILE, TrialRecord, write_json_atomic, write_tables

NAME = "fixture"
PARAMS = ["d_model", "lr", "optimizer", "dataloader_shuffle_with_replacement"]
EPOCHS = 4
BEST_TRIAL, BEST_LOSS = "t3", 1.5

# trial_id: (config_id, d_model, lr, optimizer, with_replacement, seed, status, valid losses)
TRIALS = {
    "t0": ("a", 64, 1e-3, "adam", False, 0, "completed", [2.5, 2.0, 1.8, 1.7]),
    "t1": ("a", 64, 1e-3, "adam", False, 1, "completed", [2.6, 2.1, 1.9, 1.9]),
    "t2": ("b", 128, 1e-2, "adamw", True, 0, "stopped", [2.4, 2.2]),
    "t3": ("c", 32, 1e-4, "adam", False, 0, "completed", [3.0, 2.8, 2.6, 1.5]),
    "t4": ("d", 128, 3e-2, "adamw", True, 0, "diverged", [2.9]),
    "t5": ("e", 64, 3e-4, "adamw", False, 0, "error", []),
}


def sample(trial_id: str, epoch: int) -> str:
    return f"It is {trial_id} at epoch {epoch}"


def records() -> list[TrialRecord]:
    out = []
    for trial_id, (config_id, d_model, lr, optimizer, replace, seed, status, losses) in TRIALS.items():
        config = TrainConfig(
            d_model=d_model,
            lr=lr,
            optimizer=optimizer,
            dataloader_shuffle_with_replacement=replace,
            seed=seed,
            epochs=EPOCHS,
            seq_len=32,
            batch_size=4,
            n_layers=1,
            n_heads=4,
        ).to_dict()
        record = TrialRecord(trial_id, config, config_id=config_id)
        for epoch, loss in enumerate(losses, start=1):
            record.add_epoch(
                {
                    "epoch": epoch,
                    "train_loss": loss + 0.1,
                    "train_accuracy": 1 / loss,
                    "valid_loss": loss,
                    "valid_accuracy": 1 / (loss + 0.5),
                    "tokens_seen": 1000 * epoch,
                    "tokens_per_sec": 500.0 + d_model,
                    "lr": lr,
                    "sample": sample(trial_id, epoch),
                    "seconds": 2.0,
                }
            )
        if status == "diverged":
            record.add_epoch({"epoch": len(losses) + 1, "diverged": True, "error": "valid_loss is nan"})
        elif status == "error":
            record.error = "RuntimeError: CUDA out of memory"
        record.status = status
        out.append(record)
    return out


def manifest(params: bool = True) -> dict:
    data = {"name": NAME, "metric": "valid_loss", "mode": "min", "epochs": EPOCHS}
    if params:
        data["params"] = list(PARAMS)
    return data


def build_search(directory: Path, *, params_in_manifest: bool = True, optuna_db: bool = False) -> Path:
    """Write the fixture search into ``directory`` (created); its path."""
    directory.mkdir(parents=True, exist_ok=True)
    write_tables(directory, records())
    write_json_atomic(manifest(params_in_manifest), directory / MANIFEST_FILE)
    if optuna_db:
        write_optuna_study(directory)
    return directory


def write_optuna_study(directory: Path) -> None:
    """The Optuna study the search keeps beside its tables: study name = search name, values = best losses."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=NAME, storage=f"sqlite:///{directory / 'optuna.db'}", direction="minimize")
    distributions = {
        "d_model": CategoricalDistribution([32, 64, 128]),
        "lr": FloatDistribution(1e-4, 3e-2, log=True),
        "optimizer": CategoricalDistribution(["adam", "adamw"]),
        "dataloader_shuffle_with_replacement": CategoricalDistribution([False, True]),
    }
    for _config_id, d_model, lr, optimizer, replace, _, _status, losses in TRIALS.values():
        if losses:
            params = {
                "d_model": d_model,
                "lr": lr,
                "optimizer": optimizer,
                "dataloader_shuffle_with_replacement": replace,
            }
            study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=min(losses)))
