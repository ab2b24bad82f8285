"""``python -m artune.train``: train one configuration without Ray and print each epoch."""

from __future__ import annotations

import fcntl
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch

import artune.train.checkpoint as checkpoint
from artune import ArgumentParser, stdout_closed
from artune.config import FIELD_NAMES, ConfigError, TrainConfig, add_config_arguments
from artune.data import TINY_SHAKESPEARE
from artune.errors import CheckpointError, DivergedError, ModelTooLarge, StorageError, UserError
from artune.humanize import first_line, parse_duration
from artune.train.checkpoint import CHECKPOINT_FILE
from artune.train.device import PRECISION_NAMES
from artune.train.trainer import Metrics, Trainer

# torch's thread pool: 100,000 threads crashed it (SIGSEGV) and 99999999999 overflowed it. More threads than CPUs
# train the same steps slower (1,000 on two cores: 500 times), and are warned of, not refused: a replay of a bigger
# node's trial needs its count (docs/models.md)
MAX_THREADS = 1024


def format_metrics(metrics: Metrics) -> str:
    return (
        f"epoch {metrics['epoch']:>3}  train_loss {metrics['train_loss']:.4f}  "
        f"train_acc {metrics['train_accuracy']:.3f}  valid_loss {metrics['valid_loss']:.4f}  "
        f"valid_acc {metrics['valid_accuracy']:.3f}  {metrics['tokens_per_sec']:,.0f} tok/s  "
        f"lr {metrics['lr']:.2e}  {metrics['seconds']:.1f}s  | {metrics['sample']!r}"
    )


def _config(args: Any) -> TrainConfig:
    """The run's TrainConfig: the flags given, over the settings of the checkpoint resumed (--resume) or of a
    search's trial (--from), else over TrainConfig's defaults."""
    given = {name: getattr(args, name) for name in FIELD_NAMES if getattr(args, name) is not None}
    dataset = given.get("dataset", TINY_SHAKESPEARE)
    if dataset != TINY_SHAKESPEARE and Path(dataset).expanduser().is_file():  # recorded absolute, so that a resume
        given["dataset"] = str(Path(dataset).expanduser().absolute())  # from another directory reads the same file
    if args.trial is not None and args.from_search is None:
        raise ConfigError(f"--trial {args.trial} needs --from SEARCH")
    if args.results_dir is not None and args.from_search is None:
        raise ConfigError(f"--results-dir {args.results_dir} needs --from SEARCH (where to find the search)")
    if args.resume and args.from_search is not None:
        raise ConfigError("--resume continues its checkpoint's settings; --from starts a search's afresh: give one")
    if args.resume:
        if not args.checkpoint_dir:
            raise ConfigError("--resume needs --checkpoint-dir")
        path, state = checkpoint.read(args.checkpoint_dir, torch.device("cpu"))
        if not isinstance(state, dict) or not isinstance(state.get("config"), dict):
            raise CheckpointError(f"{path}: not an artune checkpoint (no settings in it)")
        base, origin = state["config"], f"the checkpoint in {args.checkpoint_dir}"
        unknown = [key for key in base if key not in FIELD_NAMES]
        if unknown:  # written by a newer artune, most likely
            raise CheckpointError(
                f"{path}: its settings hold {', '.join(map(repr, unknown))}, which this artune does not know; "
                "resume it with the artune that wrote it, or start afresh"
            )
        try:
            TrainConfig.from_dict({**base, **given})  # a flag may set right what the file holds wrong
        except ConfigError as exc:
            try:
                TrainConfig.from_dict(base)
            except ConfigError:  # a damaged or hand-edited checkpoint: the file, not a flag, is to blame
                raise CheckpointError(f"{path}: its settings do not load ({exc})") from None
    elif args.from_search is not None:
        # pyarrow and pandas only for --from: the trainer's import (in every trial) goes without them
        from artune.results import DEFAULT_RESULTS_DIR, load

        try:
            results = load(args.from_search, args.results_dir or DEFAULT_RESULTS_DIR)
        except FileNotFoundError as exc:
            raise ConfigError(f"--from {args.from_search}: {exc}") from None
        base = results.config(args.trial).to_dict()
        trial = args.trial or results.trial()["trial_id"]
        origin = f"trial {trial} of search {results.name}"
    else:
        base, origin = {}, ""
    corpus = data_as_dataset(args.data_dir, base, given, origin)
    if args.from_search is not None:  # the flags given, and the corpus where --data names another
        changes = {**given, **{k: v for k, v in corpus.items() if base.get(k) != v}}
        changed = ", ".join(f"{k}={v}" for k, v in changes.items()) or "nothing"
        print(f"the configuration of {origin}; changed here: {changed}")
    return TrainConfig.from_dict({**base, **given, **corpus})


def data_as_dataset(data: Optional[str], base: dict[str, Any], given: dict[str, Any], origin: str) -> dict[str, str]:
    """``--data FILE`` as the ``dataset`` knob, so that the checkpoint records the corpus trained on (as a
    search's trials do). ``--data`` that another ``dataset`` would leave unread is refused, naming both."""
    if data is None:
        return {}
    path = Path(data).expanduser()
    if "dataset" in given and (path.is_file() or given["dataset"] != TINY_SHAKESPEARE):
        raise ConfigError(f"--data {data} and --dataset {given['dataset']} both name the corpus: give one")
    if path.is_file():
        return {"dataset": str(path.absolute())}
    dataset = base.get("dataset", TINY_SHAKESPEARE)
    if dataset != TINY_SHAKESPEARE and "dataset" not in given:
        # --data is Tiny Shakespeare's directory here: the checkpoint's or the trial's own corpus file would win
        raise ConfigError(
            f"--data {data} is not a file, and {origin} trained on the file {dataset}: give that file (or a copy "
            "of it) with --data, or leave --data out"
        )
    return {}


def main(argv: Optional[list[str]] = None, started: Optional[float] = None) -> int:
    """``python -m artune.train --d_model 128 --epochs 2 ...``: one configuration, no Ray."""
    parser = ArgumentParser(
        prog="python -m artune.train", description="Train one configuration without Ray and print each epoch."
    )
    # --data as in `python -m artune.search`; --data-dir is its older name
    parser.add_argument(
        "--data",
        "--data-dir",
        dest="data_dir",
        metavar="PATH",
        help="the corpus: a text file, or the directory holding tiny_shakespeare.txt "
        "(default: $ARTUNE_DATA_DIR or the cache)",
    )
    parser.add_argument("--checkpoint-dir", help="write a checkpoint here after every epoch (if is_save_models)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="resume from the checkpoint in --checkpoint-dir, with its settings but the flags given here",
    )
    parser.add_argument(
        "--from",
        dest="from_search",
        metavar="SEARCH",
        help="train a search's best trial's configuration again (a results directory, or a name under "
        "--results-dir), with the flags given here changing it (--epochs 20, say)",
    )
    parser.add_argument("--trial", metavar="ID", help="with --from: this trial's configuration, not the best's")
    parser.add_argument(
        "--results-dir", help="with --from: where searches live (default: results, as for python -m artune.search)"
    )
    parser.add_argument(
        "--threads", type=int, help=f"torch CPU threads, from 1 to {MAX_THREADS} (default: torch's choice)"
    )
    parser.add_argument(
        "--time-budget",
        metavar="DURATION",
        help="stop once this long has passed since the command started, start-up included (e.g. 900, 15m), "
        "the lr decay fitted to the whole epochs that fit, as a search's trials are",
    )
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    # A time budget counts from the command's start (``started``, a time.monotonic(): python -m artune.train gives
    # artune's import, so torch's counts too, as in a search), or from this call where none is given.
    began = time.time() - (0.0 if started is None else time.monotonic() - started)
    held = None  # the checkpoint directory's descriptor, locked for this run
    try:
        config = _config(args)
        deadline = None
        if args.time_budget is not None:
            try:
                deadline = began + parse_duration(args.time_budget)
            except ValueError:
                raise ConfigError(
                    f"--time-budget must be a positive duration such as 900, 90s, 15m or 1.5h, "
                    f"but got {args.time_budget!r}"
                ) from None
        # Checked before the corpus is read or an epoch trained: a bad directory would otherwise
        # fail (or overwrite a checkpoint) only when the first epoch's checkpoint is written.
        if args.threads is not None and not 1 <= args.threads <= MAX_THREADS:
            raise ConfigError(f"--threads must be from 1 to {MAX_THREADS}, but got {args.threads}")
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        if args.threads is not None and args.threads > usable:  # (a trial of a bigger node, replayed bit for bit)
            print(f"warning: --threads {args.threads} is more than the {usable} CPUs this process may use: the "
                  "same steps, slower", file=sys.stderr, flush=True)  # fmt: skip
        if args.checkpoint_dir == "":
            raise ConfigError("--checkpoint-dir must name a directory, but got an empty string")
        if args.checkpoint_dir and config.is_save_models:
            directory = Path(args.checkpoint_dir)
            try:
                existing = next(p for p in (directory, *directory.absolute().parents) if p.exists())
            except OSError as exc:  # a parent this user may not look into (EACCES)
                raise ConfigError(
                    f"--checkpoint-dir {directory}: cannot look into it ({exc.strerror or exc}); "
                    "choose another --checkpoint-dir"
                ) from None
            if not existing.is_dir():
                raise ConfigError(
                    f"--checkpoint-dir {directory}: {existing} is a file, not a directory; "
                    "choose another --checkpoint-dir"
                )
            if not os.access(existing, os.W_OK | os.X_OK):
                raise ConfigError(
                    f"--checkpoint-dir {directory}: {existing} is not writable; choose another --checkpoint-dir"
                )
            if not args.resume and (directory / CHECKPOINT_FILE).exists():
                raise ConfigError(
                    f"--checkpoint-dir {directory} holds a checkpoint ({CHECKPOINT_FILE}); use --resume to "
                    "continue it, or choose another --checkpoint-dir"
                )
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        trainer = Trainer(config, data_dir=args.data_dir)
        if args.resume:
            trainer.load_checkpoint(args.checkpoint_dir)
            print(f"resumed from {args.checkpoint_dir} after epoch {trainer.epoch}")
            if trainer.epoch >= config.epochs:
                print(
                    f"nothing left to train: the checkpoint finished epoch {trainer.epoch} of epochs={config.epochs}; "
                    f"give --epochs N (more than {trainer.epoch}) to train on"
                )
                return 0
        if args.checkpoint_dir and config.is_save_models:  # once every input has been read: none leaves it made
            held = hold_checkpoint_dir(Path(args.checkpoint_dir))
        print(
            f"{trainer.model.num_parameters():,} parameters, vocabulary {trainer.corpus.vocab_size}, "
            f"{len(trainer.corpus.train):,} train / {len(trainer.corpus.valid):,} valid tokens, "
            f"device {trainer.device}, precision {PRECISION_NAMES[trainer.autocast_dtype]}"
            + (" (auto)" if config.precision == "auto" else "")
        )

        def report(metrics: Metrics) -> None:
            print(format_metrics(metrics), flush=True)
            if args.checkpoint_dir and config.is_save_models:
                try:
                    trainer.save_checkpoint(args.checkpoint_dir)
                except OSError as exc:  # a full disk, an unwritable directory: the last good checkpoint stays
                    raise StorageError(
                        f"--checkpoint-dir {args.checkpoint_dir}: cannot write the checkpoint of epoch "
                        f"{metrics['epoch']} ({exc.strerror or exc})"
                    ) from None

        history = trainer.fit(report, deadline=deadline)
        if deadline is not None and trainer.epoch < config.epochs:
            if trainer.epoch == 0:  # as a search in whose budget no trial trained an epoch
                print(
                    f"error: --time-budget {args.time_budget} ended before the first epoch: no model",
                    file=sys.stderr,
                )
                return 1
            print(f"time budget {args.time_budget} reached after epoch {trainer.epoch} ({len(history)} trained here)")
    except (UserError, CheckpointError) as exc:  # a bad input: a setting, the corpus, the checkpoint to resume
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except DivergedError as exc:  # the run failed, as a search whose every trial diverged (exit 1 there too)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except StorageError as exc:  # a checkpoint could not be written (exit 4, as a search's storage): the last stays
        print(f"error: {exc}", file=sys.stderr)
        return 4
    except ModelTooLarge as exc:  # as out of memory (exit 1), found before the model was built
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (MemoryError, RuntimeError) as exc:  # the run failed (exit 1): one line, not torch's traceback
        if not out_of_memory(exc):
            raise
        print(
            f"error: the run ran out of memory ({first_line(exc) or type(exc).__name__}); a smaller model or batch "
            "(d_model, d_ff, n_layers, batch_size, seq_len) may fit",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return stdout_closed()
    finally:
        if held is not None:
            os.close(held)
    return 0


def hold_checkpoint_dir(directory: Path) -> Optional[int]:
    """The checkpoint directory, made and locked for this run (flock: the kernel drops it as the process ends): two
    runs into one directory each ended with exit 0, and it held one's model, the other's lost. None where the file
    system has no locks."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        held = os.open(directory, os.O_RDONLY)
    except OSError as exc:
        raise ConfigError(f"--checkpoint-dir {directory}: cannot make it ({exc.strerror or exc})") from None
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(held)
        raise ConfigError(
            f"--checkpoint-dir {directory}: another run is training into it; wait for it to end, or choose another "
            "--checkpoint-dir"
        ) from None
    except OSError:
        os.close(held)
        return None
    return held


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation that failed: Python's, torch's on a GPU, or its CPU allocator's."""
    return isinstance(exc, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in str(exc)
