"""Trainer: epochs of training, validation and a greedy sample, with exact-resume checkpoints.

This module never imports Ray: ``artune.trainable`` wraps it for Ray Tune, and
``python -m artune.train`` runs one configuration on its own for debugging.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
import torch.nn.functional as F

from artune import ArgumentParser, stdout_closed
from artune.batches import train_batches, valid_batches
from artune.compat import cpu_has_native_bf16
from artune.config import FIELDS, ConfigError, TrainConfig, compiler_message, ff_width, missing_compiler
from artune.data import Corpus, check_fits, load_corpus, num_sequential_batches, num_shuffled_batches
from artune.errors import CheckpointError, DeadlineReached, DivergedError  # noqa: F401  (re-exported)
from artune.models import GPT, ModelConfig
from artune.optim import lr_lambda, make_optimizer
from artune.tokenizers import get_tokenizer

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
# How often (in steps) the training loop looks for a non-finite loss. Each look is a host sync,
# so it is not done every step; a diverged run still stops within this many steps.
DIVERGENCE_CHECK_EVERY = 32
# Under a deadline, a decay's plan is lengthened only when the longer plan fits with this much of an
# epoch to spare: where the deadline falls near the end of an epoch, the pace's jitter would otherwise
# move the plan's end back and forth between two epochs, its lr up and down with it.
LENGTHEN_MARGIN = 0.25
# compile: 'auto' rents before it buys: compiling costs a fixed time up front and saves a share of every
# step, and ASHA may stop a trial at any rung. So it trains eagerly for as long as compiling takes to pay
# back, then compiles if as long again is left of its plan: a trial pays at most twice what it had to.
# The pay-back times per device are measured (docs/benchmarks.md, 'Compile'; docs/experiments.md, 'compile: auto').
AUTO_COMPILE_AFTER_S = {"cpu": 180.0, "cuda": 30.0}

Metrics = dict[str, Any]


def model_config(config: TrainConfig, vocab_size: int) -> ModelConfig:
    """The one explicit mapping from the flat run config to the model's own config."""
    return ModelConfig(
        vocab_size=vocab_size,
        seq_len=config.seq_len,
        d_model=config.d_model,
        n_layers=config.n_layers,
        n_heads=config.n_heads,
        d_ff=config.ff_width,
        dropout=config.dropout,
        position_encoding=config.position_encoding,
        activation=config.activation,
    )


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device 'cuda' needs a CUDA device, but torch {torch.version.__version__} sees none; "
            "use device 'auto' or 'cpu'"
        )
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device, d_model: int = 512) -> torch.dtype:
    """The autocast dtype; fp32 means no autocast.

    'auto' picks bf16 on CUDA GPUs that support it, and on a CPU only where it helps: the CPU must
    multiply bf16 natively (without it oneDNN's bf16 path is far slower than fp32; see docs/benchmarks.md,
    'Precision') and a bf16 matmul of the model's width must beat fp32 in a quick side-by-side probe
    (:func:`cpu_bf16_speedup`).
    """
    if name == "bf16":
        return torch.bfloat16
    if name != "auto":
        return torch.float32
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu" and cpu_has_native_bf16() and cpu_bf16_speedup(d_model) >= BF16_MIN_SPEEDUP:
        return torch.bfloat16
    return torch.float32


# bf16 autocast also casts activations and keeps fp32 master weights: its matmuls must be clearly
# faster than fp32's to make the whole step faster.
BF16_MIN_SPEEDUP = 1.3


def matmul_rate(m: int, k: int, n: int, dtype: torch.dtype = torch.float32, seconds: float = 0.2) -> float:
    """Measured FLOP/s of an ``(m, k) @ (k, n)`` matmul on this process's CPU threads."""
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    for _ in range(2):
        a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * m * k * n * count / (time.perf_counter() - start)


@functools.lru_cache(maxsize=None)
def cpu_bf16_speedup(d_model: int, tokens: int = 1024, seconds: float = 0.05) -> float:
    """bf16 matmul throughput over fp32 on this process's threads, for a ``(tokens, d) x (d, 4d)`` product.

    Measured once per width and process (about 0.3 s), interleaved, best of three rounds.
    """
    best = {torch.float32: 0.0, torch.bfloat16: 0.0}
    for _ in range(3):
        for dtype in best:
            best[dtype] = max(best[dtype], matmul_rate(tokens, d_model, 4 * d_model, dtype, seconds))
    return best[torch.bfloat16] / best[torch.float32]


def steps_per_epoch(config: TrainConfig, n_train_tokens: int) -> int:
    """Optimizer steps in one training epoch: the loader's full pass, capped by ``batches_per_epoch``.

    With ``compile`` (true or 'auto') the epoch's partial last batch is skipped (see
    ``Trainer._batches``), so the lr schedule plans without it.
    """
    if config.train_loader == "sequential":
        full = num_sequential_batches(
            n_train_tokens, config.batch_size, config.seq_len, whole_only=config.whole_batches
        )
    else:
        full = num_shuffled_batches(n_train_tokens, config.batch_size, config.seq_len, whole_only=config.whole_batches)
    return full if config.batches_per_epoch is None else min(full, config.batches_per_epoch)


_compiled_shape: Optional[tuple] = None  # what the last compiled Trainer of this process compiled
# why torch.compile failed in this process, under compile: auto (which then stops trying)
_compile_failed: Optional[str] = None


def _compile_afresh_for_a_new_shape(shape: tuple) -> None:
    """Clear torch.compile's caches when this process compiles a different model shape than before.

    Dynamo keeps one compiled entry per shape of the model's ``forward`` and, past its recompile
    limit (8), silently runs it eagerly: a Ray worker reused across a search over ``d_model`` would
    train its 9th shape uncompiled. Same-shaped trials (the usual reuse) keep the compiled code;
    a new shape compiles anew (from the inductor cache on disk where it holds the shape).
    """
    global _compiled_shape
    if _compiled_shape is not None and shape != _compiled_shape:
        torch.compiler.reset()
    _compiled_shape = shape


class Trainer:
    """Trains one configuration. ``fit()`` returns (and passes to ``callback``) one metrics dict per epoch.

    ``clock`` is what a deadline is read against and the pace under it measured on: ``time.time`` but in
    tests, which give a clock they control so that how many epochs fit does not depend on the machine.
    """

    def __init__(
        self,
        config: TrainConfig,
        corpus: Optional[Corpus] = None,
        *,
        data_dir: Optional[str | os.PathLike] = None,
        device: Optional[torch.device] = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.clock = clock
        # what compiling needs: with compile: auto, a missing compiler means training eagerly
        self.missing_compiler = missing_compiler() if config.compile else None
        if config.compile is True and self.missing_compiler:
            raise ConfigError(compiler_message(self.missing_compiler))
        self.corpus = corpus if corpus is not None else load_corpus(config.dataset, config.tokenizer, data_dir)
        check_fits(
            self.corpus,
            config.seq_len,
            config.batch_size,
            train_loader=config.train_loader,
            valid_loader=config.valid_loader,
            whole_batches=config.whole_batches,
        )
        tokenize = get_tokenizer(config.tokenizer)
        self.prompt_ids = self.corpus.vocabulary.encode(tokenize(config.prompt))  # unknown tokens: an error
        if config.sample_tokens > 0 and not self.prompt_ids:
            raise ConfigError(
                f"prompt must give at least one {config.tokenizer} token when sample_tokens > 0, "
                f"but got {config.prompt!r}"
            )

        self.device = device if device is not None else resolve_device(config.device)
        self.autocast_dtype = resolve_precision(config.precision, self.device, config.d_model)
        torch.manual_seed(config.seed)
        shape = model_config(config, self.corpus.vocab_size)
        self.model = GPT(shape).to(self.device)
        self.forward = self.model  # the training step's model: compiled from the start, or later with compile: auto
        self.compile_key = (
            shape,
            config.batch_size,
            config.seq_len,
            config.compile_mode,
            self.device,
            self.autocast_dtype,
        )
        if config.compile is True:
            self.compile()
        self.epoch_steps = steps_per_epoch(config, len(self.corpus.train))
        # The lr schedule's plan: epoch E of this run ends at step plan_base[1] + (E - plan_base[0]) * epoch_steps.
        # (0, 0) but in a run resumed with another epoch size: the epoch and step it resumed at.
        self.plan_base = (0, 0)
        self.total_steps = self.steps_at(config.epochs)
        self.optimizer = make_optimizer(config, self.model.parameters(), self.total_steps)
        # The batch order has its own generator, so it is the same whatever else draws random numbers.
        self.generator = torch.Generator().manual_seed(config.seed)
        # The corpus's numpy arrays (read-only when Ray hands them over) become tensors here: a copy of
        # each split, in its compact dtype, on the trial's device.
        self.train_tokens = torch.tensor(self.corpus.train, device=self.device)
        self.valid_tokens = torch.tensor(self.corpus.valid, device=self.device)
        self.epoch = 0
        self.tokens_seen = 0
        self.epoch_seconds: Optional[float] = None  # the last epoch's, for the pace under a deadline (checkpointed)
        self._activations: dict[str, torch.Tensor] = {}
        self._grad_norm: Optional[torch.Tensor] = None  # the last step's gradient norm, before clipping
        self._compiling = False
        self._compile_seconds = 0.0  # what the epoch's first step took over the others, where it compiled

    # --- the loop

    def fit(
        self, callback: Optional[Callable[[Metrics], None]] = None, deadline: Optional[float] = None
    ) -> list[Metrics]:
        """Train the remaining epochs. Past ``deadline`` (a time on ``clock``) it stops mid-epoch, and
        returns the epochs finished (and passed to ``callback``) before it."""
        history = []
        while self.epoch < self.config.epochs:
            if deadline is not None and self.epoch_seconds is not None:
                self.fit_schedule_to(deadline, self.epoch_seconds)
            try:
                metrics = self.run_epoch(deadline)
            except DeadlineReached:
                break  # the cut epoch is neither reported nor checkpointed
            history.append(metrics)
            if callback is not None:
                callback(metrics)
        return history

    def fit_schedule_to(self, deadline: float, epoch_seconds: float) -> None:
        """End a decaying lr schedule that would outlast ``deadline`` with the last epoch before it.

        Under a search's time budget a trial planned for more epochs than the budget leaves it
        would be cut with its lr still high, and a decay that never finished is most of what a
        decay gives. Before each epoch, the whole epochs that fit (at the last epoch's pace, which
        a checkpoint keeps, so a trial resumed in a new process fits its first epoch too), at most
        ``epochs``, set the schedule's end: it is planned again over that many epochs, from the
        steps already taken. The pace is measured anew each epoch, so the plan follows it (a first
        epoch slower than the rest planned one or two epochs short): it is shortened as soon as it
        no longer fits, and lengthened only when the longer plan fits with ``LENGTHEN_MARGIN`` of
        an epoch to spare. A constant schedule and Noam have no end to move.
        """
        c = self.config
        if c.optimizer == "noam" or c.lr_schedule == "constant" or epoch_seconds <= 0:
            return
        room = max(0.0, (deadline - self.clock()) / epoch_seconds)  # the epochs' worth of time left
        fit = self.epoch + max(1, int(room))
        planned = self.planned_epochs
        if fit > planned:
            fit = max(planned, self.epoch + max(1, int(room - LENGTHEN_MARGIN)))
        self._plan(self.steps_at(min(c.epochs, fit)))

    @property
    def planned_epochs(self) -> int:
        """The epoch the lr schedule's plan ends with (``epochs``, or fewer under a deadline)."""
        return self.plan_base[0] + (self.total_steps - self.plan_base[1]) // self.epoch_steps

    def steps_at(self, epoch: int) -> int:
        """The optimizer steps the schedule plans up to the end of ``epoch``."""
        base_epoch, base_steps = self.plan_base
        return base_steps + (epoch - base_epoch) * self.epoch_steps

    def _plan(self, total: int) -> None:
        if total != self.total_steps:
            self.total_steps = total
            self.optimizer.schedule = lr_lambda(self.config, total)

    # --- compiling

    def compile(self) -> None:
        """Train through torch.compile from the next step on (validation and sampling stay eager)."""
        _compile_afresh_for_a_new_shape(self.compile_key)
        self.forward = torch.compile(self.model, mode=self.config.compile_mode)
        self._compiling = True  # the next step compiles: the epoch's pace leaves that out

    @property
    def compiled(self) -> bool:
        return self.forward is not self.model

    def compile_pays(self) -> bool:
        """compile: auto's choice before each epoch (see ``AUTO_COMPILE_AFTER_S``): whether to compile now."""
        if self.missing_compiler or _compile_failed or self.device.type not in AUTO_COMPILE_AFTER_S:
            return False
        if _compiled_shape == self.compile_key:
            return True  # this process compiled the same shape: torch.compile's cache holds it, nothing to pay
        if self.epoch_seconds is None:
            return False
        after = AUTO_COMPILE_AFTER_S[self.device.type]
        trained = self.epoch * self.epoch_seconds  # at the last epoch's pace, so a resumed trial counts its past epochs
        left = (self.planned_epochs - self.epoch) * self.epoch_seconds
        return trained >= after and left >= after

    # --- epochs

    def run_epoch(self, deadline: Optional[float] = None) -> Metrics:
        if self.config.compile == "auto" and not self.compiled and self.compile_pays():
            self.compile()
        start, begun = time.perf_counter(), self.clock()
        train_loss, train_accuracy, tokens, train_seconds = self.train_epoch(deadline)
        self.epoch += 1
        valid_loss, valid_accuracy = self.validate()
        metrics: Metrics = {
            "epoch": self.epoch,
            "train_loss": train_loss,
            "train_accuracy": train_accuracy,
            "valid_loss": valid_loss,
            "valid_accuracy": valid_accuracy,
            "tokens_seen": self.tokens_seen,
            "tokens_per_sec": tokens / train_seconds if train_seconds > 0 else float("nan"),
            "lr": self.optimizer.last_lr,  # of the epoch's last step
            "compiled": self.compiled,
            "sample": self.sample(),
        }
        if self.config.is_log_model_params_grads:
            metrics.update(self._param_grad_stats())
        if self.config.is_log_model_activations:
            metrics.update(self._activation_stats())
        metrics["seconds"] = time.perf_counter() - start
        # the pace a deadline plans by: without the one-off compilation, which would plan the lr's end an epoch short
        self.epoch_seconds = self.clock() - begun - self._compile_seconds
        return metrics

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        c = self.config
        start = 0
        if c.train_loader == "sequential" and c.batches_per_epoch is not None:
            # a capped epoch starts where the one before it stopped (over the epochs, every batch of the
            # split), at the step the plan counts to it: in a run resumed with another cap, the batches
            # trained before the resume at their own cap, and this run's after it
            start = self.steps_at(self.epoch)
        batches = train_batches(
            self.train_tokens,
            c.train_loader,
            c.batch_size,
            c.seq_len,
            self.generator,
            c.dataloader_shuffle_with_replacement,
            start=start,
            whole_only=c.whole_batches,
        )
        for i, batch in enumerate(batches):
            if c.batches_per_epoch is not None and i >= c.batches_per_epoch:
                return
            if c.whole_batches and batch[0].shape != (c.batch_size, c.seq_len):
                # the epoch's partial last batch (fewer rows, or shorter for sequential): a new shape would recompile
                return
            yield batch

    def train_epoch(self, deadline: Optional[float] = None) -> tuple[float, float, int, float]:
        """One pass of training. Returns mean loss, token accuracy, tokens trained and seconds.

        Loss and accuracy are summed on the device and read once at the end: a ``.item()`` per
        step would make the host wait for every step to finish. Past ``deadline`` (a
        time on ``clock``) the epoch stops with ``DeadlineReached``; its partial work is not counted.
        """
        self.model.train()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        tokens = 0
        c = self.config
        clip = c.grad_norm_clip
        compiling, self._compiling, self._compile_seconds = self._compiling, False, 0.0
        start = time.perf_counter()
        first_step = 0.0
        for step, (x, y) in enumerate(self._batches()):  # x, y: (B, T)
            if deadline is not None and self.clock() >= deadline:
                raise DeadlineReached(f"the deadline passed in epoch {self.epoch + 1}, after {step} of its steps")
            try:
                logits, loss = self._forward_backward(x, y)
            except (
                Exception
            ) as exc:  # torch.compile's own (a compiler that does not work, say) where this step compiled
                if not (compiling and step == 0 and c.compile == "auto"):
                    raise
                self._train_eagerly(exc)
                logits, loss = self._forward_backward(x, y)
            # the norm before clipping
            self._grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip, foreach=True)
            self.optimizer.step()  # and the lr schedule's
            n = y.numel()
            loss_sum += loss.detach() * n
            correct += (logits.detach().argmax(dim=-1) == y).sum()
            tokens += n
            if (step + 1) % DIVERGENCE_CHECK_EVERY == 0 and not torch.isfinite(loss_sum):
                break
            if compiling and step == 0:
                first_step = time.perf_counter() - start  # torch.compile compiles on the host, in the first call
        self.tokens_seen += tokens
        mean_loss = loss_sum.item() / max(tokens, 1)
        seconds = time.perf_counter() - start
        steps = tokens // (c.batch_size * c.seq_len)
        if compiling and steps > 1:
            self._compile_seconds = max(0.0, first_step - (seconds - first_step) / (steps - 1))
        if not math.isfinite(mean_loss):
            raise DivergedError(
                f"training loss became {mean_loss} in epoch {self.epoch + 1} "
                f"(lr={self.config.lr}); the run is stopped and no checkpoint is written"
            )
        return mean_loss, correct.item() / max(tokens, 1), tokens, seconds

    def _forward_backward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self._autocast():
            logits = self.forward(x)  # (B, T, V)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        self.optimizer.zero_grad()
        loss.backward()
        return logits, loss

    def _train_eagerly(self, exc: Exception) -> None:
        """compile: auto's way out where torch.compile fails: eager training, as without a compiler."""
        global _compile_failed
        _compile_failed = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"
        print(
            f"warning: compile: auto: torch.compile failed in epoch {self.epoch + 1} ({_compile_failed}); "
            "this process trains eagerly from here",
            file=sys.stderr,
            flush=True,
        )
        self.forward = self.model

    @torch.no_grad()
    def validate(self) -> tuple[float, float]:
        """A deterministic full pass over the valid split: mean loss and token accuracy."""
        self.model.eval()
        c = self.config
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        tokens = 0
        hooks = self._activation_hooks() if c.is_log_model_activations else []
        for x, y in valid_batches(self.valid_tokens, c.valid_loader, c.batch_size, c.seq_len, c.seed):
            with self._autocast():
                logits = self.model(x)  # eager: a compiled eval graph costs more than the one pass it speeds up
            loss_sum += F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="sum")
            correct += (logits.argmax(dim=-1) == y).sum()
            tokens += y.numel()
            for hook in hooks:  # activation statistics from the first batch are enough
                hook.remove()
            hooks = []
        return loss_sum.item() / tokens, correct.item() / tokens

    @torch.no_grad()
    def sample(self) -> str:
        """Greedy continuation of the prompt, decoded with the tokenizer's separator."""
        if self.config.sample_tokens == 0:
            return self.config.prompt
        self.model.eval()
        idx = torch.tensor([self.prompt_ids], dtype=torch.long, device=self.device)
        with self._autocast():
            out = self.model.generate(idx, self.config.sample_tokens)
        new = self.corpus.vocabulary.decode(out[0, len(self.prompt_ids) :].tolist(), self.config.separator)
        return self.config.prompt + self.config.separator + new

    # --- optional diagnostics (off by default: they cost time)

    def _param_grad_stats(self) -> Metrics:
        """Each parameter's norm, and the epoch's last gradients before clipping: ``grad_norm/total``
        (what clipping compared with grad_norm_clip) and each parameter's share of it."""
        stats: Metrics = {}
        total = self._grad_norm.item() if self._grad_norm is not None else None
        # clip_grad_norm_'s own scale
        unclip = 1.0 if total is None else max(1.0, (total + 1e-6) / self.config.grad_norm_clip)
        if total is not None:
            stats["grad_norm/total"] = total
        for name, p in self.model.named_parameters():
            stats[f"param_norm/{name}"] = p.detach().norm().item()
            if p.grad is not None:
                stats[f"grad_norm/{name}"] = p.grad.detach().norm().item() * unclip
        return stats

    def _activation_hooks(self) -> list:
        self._activations.clear()

        def keep(name: str) -> Callable:
            def hook(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
                self._activations[name] = output.detach().float()

            return hook

        return [block.register_forward_hook(keep(f"blocks.{i}")) for i, block in enumerate(self.model.blocks)]

    def _activation_stats(self) -> Metrics:
        stats: Metrics = {}
        for name, a in self._activations.items():
            stats[f"activation_mean/{name}"] = a.mean().item()
            stats[f"activation_std/{name}"] = a.std().item()
        return stats

    # --- checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain values only, so it loads with ``torch.load(weights_only=True)``."""
        rng = {"torch": torch.get_rng_state(), "batches": self.generator.get_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "vocabulary": list(self.corpus.vocabulary.itos),
            "corpus_sha256": self.corpus.sha256,
            "epoch": self.epoch,
            "tokens_seen": self.tokens_seen,
            "epoch_seconds": self.epoch_seconds,
            "plan_base": list(self.plan_base),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict):
            raise CheckpointError(f"not an artune checkpoint (holds a {type(state).__name__})")
        if state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(
                f"checkpoint format {state.get('format')!r} is not this artune's ({CHECKPOINT_FORMAT}); resume it "
                "with the artune that wrote it, or start afresh"
            )
        if state["vocabulary"] != list(self.corpus.vocabulary.itos):
            raise CheckpointError("checkpoint was trained with another vocabulary (a different corpus or tokenizer)")
        if state.get("corpus_sha256", self.corpus.sha256) != self.corpus.sha256:
            raise CheckpointError(
                f"checkpoint was trained on another corpus (sha256 {state['corpus_sha256'][:12]}, "
                f"not {self.corpus.source}'s {self.corpus.sha256[:12]})"
            )
        # A knob the checkpoint's settings lack was added since: that run had its default.
        saved = {**{k: FIELDS[k].default for k in RESUME_MUST_MATCH}, **state["config"]} if "config" in state else {}
        now = self.config.to_dict()
        if saved and (saved.get("d_ff") is None) != (
            now["d_ff"] is None
        ):  # none is a width of d_model's: that width, given
            for config in (saved, now):
                config["d_ff"] = ff_width(config["d_model"], config.get("d_ff"), config["activation"])
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
        self.model.load_state_dict(state["model"])
        optimizer = state["optimizer"]
        if "steps_taken" not in optimizer:  # written through torch.optim, with a LambdaLR counting the steps
            optimizer = {**optimizer, "steps_taken": state["scheduler"]["last_epoch"]}
        self.optimizer.load_state_dict(optimizer)
        # RNG states are CPU byte tensors whatever map_location moved them to
        torch.set_rng_state(state["rng"]["torch"].cpu())
        self.generator.set_state(state["rng"]["batches"].cpu())
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"].cpu(), self.device)
        self.epoch = int(state["epoch"])
        self.tokens_seen = int(state["tokens_seen"])
        self.epoch_seconds = state.get("epoch_seconds")
        # The schedule is planned again over this run's epochs, from the step the checkpoint reached. With
        # the epoch size it was trained at, the plan is the one an uninterrupted run has; with another
        # (batches_per_epoch or compile changed), the remaining epochs are counted at the new size.
        if self._saved_epoch_steps(state) == self.epoch_steps:
            self.plan_base = tuple(int(v) for v in state.get("plan_base", (0, 0)))
        else:
            self.plan_base = (self.epoch, self.optimizer.steps_taken)
        self._plan(self.steps_at(self.config.epochs))

    def _saved_epoch_steps(self, state: dict[str, Any]) -> int:
        """The checkpoint's epoch size: this run's, with the epoch-size settings the checkpoint recorded
        (its corpus, loader, batch and window are this run's, or it was refused)."""
        saved = state.get("config", {})
        then = dataclasses.replace(
            self.config, compile_mode="default", **{k: saved[k] for k in ("batches_per_epoch", "compile") if k in saved}
        )
        return steps_per_epoch(then, len(self.corpus.train))

    def save_checkpoint(self, directory: str | os.PathLike) -> Path:
        """Write ``checkpoint.pt`` atomically: a crash mid-write leaves the previous file intact."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / CHECKPOINT_FILE
        tmp = directory / f".{CHECKPOINT_FILE}.{os.getpid()}.tmp"
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)
        return path

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        path = Path(path)
        if path.is_dir():
            path = path / CHECKPOINT_FILE
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except FileNotFoundError:
            raise CheckpointError(f"{path}: checkpoint file not found") from None
        except Exception as exc:  # noqa: BLE001 (torch.load's many kinds: a truncated zip, a refused unpickling, ...)
            raise CheckpointError(f"{path}: cannot load checkpoint ({type(exc).__name__}: {exc})") from None
        try:
            self.load_state_dict(state)
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{path}: checkpoint does not fit this configuration ({exc})") from None


def format_metrics(metrics: Metrics) -> str:
    return (
        f"epoch {metrics['epoch']:>3}  train_loss {metrics['train_loss']:.4f}  "
        f"train_acc {metrics['train_accuracy']:.3f}  valid_loss {metrics['valid_loss']:.4f}  "
        f"valid_acc {metrics['valid_accuracy']:.3f}  {metrics['tokens_per_sec']:,.0f} tok/s  "
        f"lr {metrics['lr']:.2e}  {metrics['seconds']:.1f}s  | {metrics['sample']!r}"
    )


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m artune.train --d_model 128 --epochs 2 ...``: one configuration, no Ray."""
    from artune.config import ConfigError, add_config_arguments, config_from_arguments
    from artune.data import CorpusError
    from artune.tokenizers import UnknownTokenError

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
    parser.add_argument("--resume", action="store_true", help="resume from the checkpoint in --checkpoint-dir")
    parser.add_argument("--threads", type=int, help="torch CPU threads, at least 1 (default: torch's choice)")
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    try:
        config = config_from_arguments(args)
        # Checked before the corpus is read or an epoch trained: a bad directory would otherwise
        # fail (or overwrite a checkpoint) only when the first epoch's checkpoint is written.
        if args.threads is not None and args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, but got {args.threads}")
        if args.resume and not args.checkpoint_dir:
            raise ConfigError("--resume needs --checkpoint-dir")
        if args.checkpoint_dir and config.is_save_models:
            directory = Path(args.checkpoint_dir)
            existing = next(p for p in (directory, *directory.absolute().parents) if p.exists())
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
        print(
            f"{trainer.model.num_parameters():,} parameters, vocabulary {trainer.corpus.vocab_size}, "
            f"{len(trainer.corpus.train):,} train / {len(trainer.corpus.valid):,} valid tokens, "
            f"device {trainer.device}"
        )

        def report(metrics: Metrics) -> None:
            print(format_metrics(metrics), flush=True)
            if args.checkpoint_dir and config.is_save_models:
                try:
                    trainer.save_checkpoint(args.checkpoint_dir)
                except (
                    OSError
                ) as exc:  # a full disk, a directory that became unwritable: the last good checkpoint stays
                    raise CheckpointError(
                        f"--checkpoint-dir {args.checkpoint_dir}: cannot write the checkpoint of epoch "
                        f"{metrics['epoch']} ({exc.strerror or exc})"
                    ) from None

        trainer.fit(report)
    except (ConfigError, CorpusError, UnknownTokenError, CheckpointError, DivergedError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return stdout_closed()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
