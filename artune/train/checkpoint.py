"""The checkpoint format: what a resumed run must share with its checkpoint, and the file's atomic write and read.

A Trainer's ``state_dict`` lists what it saves; these are the rules and the file around it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from artune.config import FIELDS, TrainConfig, beta2_of, ff_width
from artune.data import Corpus
from artune.errors import CheckpointError
from artune.files import written_atomically
from artune.humanize import first_line
from artune.train.plan import steps_per_epoch

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FORMAT = 1
# What a resumed run must share with the checkpoint: what its model, data order and optimizer are.
# How long it trains (epochs, batches_per_epoch), where and how fast (device, precision, compile),
# its sample and its logging may change.
RESUME_MUST_MATCH = (
    "tokenizer",
    "seq_len",
    "batch_size",
    "train_loader",
    "dataloader_shuffle_with_replacement",
    "d_model",
    "n_layers",
    "n_heads",
    "d_ff",
    "activation",
    "dropout",
    "position_encoding",
    "optimizer",
    "lr",
    "weight_decay",
    "adam_beta2",
    "warmup",
    "lr_schedule",
    "lr_min_ratio",
    "grad_norm_clip",
    "seed",
)


def check_resumable(state: Any, config: TrainConfig, corpus: Corpus) -> None:
    """Refuse, with what differs, a checkpoint that this configuration on this corpus cannot continue."""
    if not isinstance(state, dict):
        raise CheckpointError(f"not an artune checkpoint (holds a {type(state).__name__})")
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"checkpoint format {state.get('format')!r} is not this artune's ({CHECKPOINT_FORMAT}); resume it "
            "with the artune that wrote it, or start afresh"
        )
    for key in ("epoch", "tokens_seen"):  # counts the run goes on from (a hand-edited checkpoint's, say)
        value = state.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise CheckpointError(f"checkpoint's {key} is {value!r}, not a count (a whole number, 0 or more)")
    if state["vocabulary"] != list(corpus.vocabulary.itos):
        raise CheckpointError("checkpoint was trained with another vocabulary (a different corpus or tokenizer)")
    if state.get("corpus_sha256", corpus.sha256) != corpus.sha256:
        raise CheckpointError(
            f"checkpoint was trained on another corpus (sha256 {state['corpus_sha256'][:12]}, "
            f"not {corpus.source}'s {corpus.sha256[:12]})"
        )
    # A knob the checkpoint's settings lack was added since: that run had its default.
    saved = {**{k: FIELDS[k].default for k in RESUME_MUST_MATCH}, **state["config"]} if "config" in state else {}
    now = config.to_dict()
    if saved and (saved.get("d_ff") is None) != (now["d_ff"] is None):
        # none is a width of d_model's: compare that width with the one given
        for settings in (saved, now):
            settings["d_ff"] = ff_width(settings["d_model"], settings.get("d_ff"), settings["activation"])
    if saved and (saved.get("adam_beta2") is None) != (now["adam_beta2"] is None):
        for settings in (saved, now):  # likewise none is the optimizer's own beta2
            settings["adam_beta2"] = beta2_of(settings.get("adam_beta2"), settings["optimizer"])
    differ = [key for key in RESUME_MUST_MATCH if key in saved and saved[key] != now[key]]
    if differ:
        raise CheckpointError(
            "checkpoint was trained with "
            + ", ".join(f"{k}={saved[k]!r}" for k in differ)
            + " (this run: "
            + ", ".join(f"{k}={now[k]!r}" for k in differ)
            + "); a resumed run continues the "
            "same training: give the same settings, or start afresh"
        )


def saved_epoch_steps(state: dict[str, Any], config: TrainConfig, train_tokens: int) -> int:
    """The checkpoint's epoch size: ``config``'s, with the epoch-size settings the checkpoint recorded (its
    corpus, loader, batch and window are this run's, or it was refused)."""
    saved = state.get("config", {})
    then = dataclasses.replace(
        config, compile_mode="default", **{k: saved[k] for k in ("batches_per_epoch", "compile") if k in saved}
    )
    return steps_per_epoch(then, train_tokens)


def optimizer_state(state: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's optimizer state, with the step count ``artune.optim`` keeps."""
    optimizer = state["optimizer"]
    if "steps_taken" not in optimizer:  # written through torch.optim, with a LambdaLR counting the steps
        optimizer = {**optimizer, "steps_taken": state["scheduler"]["last_epoch"]}
    return optimizer


def rng_states(generator: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    """The random states a resumed run continues: torch's, the batch order's and, on CUDA, the device's."""
    rng = {"torch": torch.get_rng_state(), "batches": generator.get_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def restore_rng_states(rng: dict[str, torch.Tensor], generator: torch.Generator, device: torch.device) -> None:
    # RNG states are CPU byte tensors whatever map_location moved them to
    torch.set_rng_state(rng["torch"].cpu())
    generator.set_state(rng["batches"].cpu())
    if "cuda" in rng and device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"].cpu(), device)


def save(state: dict[str, Any], directory: str | os.PathLike) -> Path:
    """Write ``checkpoint.pt`` atomically: a crash mid-write leaves the previous file intact."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CHECKPOINT_FILE
    with written_atomically(path) as tmp, open(tmp, "wb") as file:
        writes = _WriteErrors(file)
        try:
            torch.save(state, writes)
        except RuntimeError:  # torch's writer reports a failed write as its own error, without the OS's
            if writes.error is not None:
                raise writes.error from None  # a full disk: ENOSPC, the file named
            raise
    return path


class _WriteErrors:
    """A file whose failed write (a full disk, a file-size limit) is kept, for ``save`` to raise as the OSError
    it was: ``torch.save`` turns it into a RuntimeError that names neither the errno nor the file."""

    def __init__(self, file: Any) -> None:
        self.file, self.error = file, None

    def write(self, data: Any) -> int:
        try:
            return self.file.write(data)
        except OSError as exc:
            self.error = exc if exc.filename is not None else OSError(exc.errno, exc.strerror, self.file.name)
            raise

    def flush(self) -> None:
        self.file.flush()


def read(path: str | os.PathLike, device: torch.device) -> tuple[Path, Any]:
    """The checkpoint file (``path``, or ``checkpoint.pt`` in it) and what it holds, loaded onto ``device``."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if path.is_file() and path.stat().st_size == 0:  # torch's EOFError says nothing
        raise CheckpointError(f"{path}: cannot load checkpoint (an empty file: a copy or a write cut short?)")
    damaged = damaged_entry(path)
    if damaged:
        raise CheckpointError(f"{path}: cannot load checkpoint (damaged: its entry {damaged} fails its CRC-32 check)")
    try:
        with warnings.catch_warnings():
            # a plain pickle (not torch.save's): torch warns of its protocol in two lines, then refuses it anyway
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return path, torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint file not found") from None
    except Exception as exc:  # noqa: BLE001 (torch.load's many kinds: a truncated zip, a refused unpickling, ...)
        raise CheckpointError(f"{path}: cannot load checkpoint ({load_failure(exc)})") from None


def damaged_entry(path: Path) -> Optional[str]:
    """The first entry of a ``torch.save`` zip whose bytes fail its CRC-32; None where all pass, or where the file
    is no zip (torch.load says what it is). torch.load checks none: a flipped bit in a weight loaded without a word,
    and one in the optimizer's state ended the resumed run as a diverged loss."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip()
    except (OSError, zipfile.BadZipFile, ValueError):
        return None


# torch.load's weights-only refusal wraps its reason in advice artune's loading never takes (weights_only=False,
# which runs the file's code: see docs/cluster.md, 'Security'; allowlisting the file's classes) and a request to
# file an issue; its wording differs for a function and for a class's object (checked on torch 2.13)
_TORCH_ADVICE = (
    "Weights only load failed",
    "Please file an issue",
    "Check the documentation of torch.load",
    "In PyTorch 2.6",
    "(1) In PyTorch 2.6",
    "(2) Alternatively",
)


def load_failure(exc: Exception) -> str:
    """Why ``torch.load`` failed, in a line: a weights-only refusal's own reason, or the first sentence of another."""
    text = str(exc)
    if "Weights only load failed" in text:
        lines = [line.strip() for line in text.splitlines()]
        reasons = [
            line.removeprefix("WeightsUnpickler error: ").split(" Please use ", 1)[0].rstrip(".")
            for line in lines
            if line and not line.startswith(_TORCH_ADVICE)
        ]
        reason = "; ".join(reasons) or "no reason given"
        return (
            f"not a checkpoint artune wrote, or a damaged one: {reason}; artune loads only tensors and plain data "
            "(torch.load's weights_only), never a pickle's code"
        )
    first = first_line(exc).split(". ", 1)[0].rstrip(".")  # torch's zip reader adds a paragraph of guesses
    # a zip cut short: torch's reader says "zip archive", or seeks past the end (EINVAL, "Invalid argument")
    cut = "zip archive" in first or (isinstance(exc, OSError) and exc.errno == errno.EINVAL)
    return f"{type(exc).__name__}: {first}" + (": corrupt or truncated" if cut else "")


@contextlib.contextmanager
def refusals_name(path: Path) -> Iterator[None]:
    """Loading a checkpoint's state: a refusal, or a state that does not fit, names the file."""
    try:
        yield
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: checkpoint does not fit this configuration ({shape_errors(exc)})") from None


def shape_errors(exc: BaseException) -> str:
    """A state that does not load, in one line: torch's ``load_state_dict`` lists every tensor that does not fit on
    a line of its own (a dozen, for another ``d_model``); the first is named, the rest counted."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if len(lines) <= 2:
        return f"{type(exc).__name__}: {' '.join(lines)}"
    return f"{type(exc).__name__}: {lines[0]} {lines[1]} (and {len(lines) - 2} more)"
