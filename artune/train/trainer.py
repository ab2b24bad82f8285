"""The Trainer: epochs of training, validation and a greedy sample, resumable from its checkpoints.

It never imports Ray: ``artune.trainable`` wraps it for Ray Tune; ``python -m artune.train`` runs one on its own.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
import torch.nn.functional as F

import artune.train.checkpoint as checkpoint
from artune.batches import valid_batches
from artune.config import ConfigError, TrainConfig, compiler_message, missing_compiler
from artune.data import Corpus, check_fits, load_corpus
from artune.errors import DeadlineReached, DivergedError, UnknownTokenError
from artune.humanize import first_line
from artune.models import GPT, ModelConfig
from artune.optim import lr_lambda, make_optimizer
from artune.tokenizers import get_tokenizer
from artune.train.compile import (
    PACE_SKIPS_STEPS,
    auto_compile_pays,
    compile_model,
    compiled_pays_off,
    note_compile_did_not_pay,
    note_compile_failed,
)
from artune.train.device import PRECISION_NAMES, fitting, resolve_device, resolve_precision, resumed_precision
from artune.train.diagnostics import activation_hooks, activation_stats, param_grad_stats
from artune.train.plan import epoch_batches, epochs_that_fit, steps_per_epoch
from artune.train.ranks import Ranks

# How often (in steps) the training loop looks for a non-finite loss. Each look is a host sync,
# so it is not done every step; a diverged run still stops within this many steps.
DIVERGENCE_CHECK_EVERY = 32

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


class Trainer:
    """Trains one configuration. ``fit()`` returns (and passes to ``callback``) one metrics dict per epoch.

    ``clock`` is what a deadline is read against and the pace under it measured on: ``time.time`` but in
    tests, which give a clock they control so that how many epochs fit does not depend on the machine.

    ``ranks``: where several workers train this configuration together (torch.distributed's process group,
    set up by the caller), each takes its rows of every global batch and the model is wrapped in
    DistributedDataParallel; the metrics are the whole batch's and the whole validation split's. Such a
    trial trains eagerly (no torch.compile).
    """

    def __init__(
        self,
        config: TrainConfig,
        corpus: Optional[Corpus] = None,
        *,
        data_dir: Optional[str | os.PathLike] = None,
        device: Optional[torch.device] = None,
        clock: Callable[[], float] = time.time,
        ranks: Optional[Ranks] = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.ranks = ranks or Ranks()
        if self.ranks.distributed and config.batch_size < self.ranks.world_size:
            raise ConfigError(
                f"batch_size >= workers must hold (each worker takes rows of every batch), "
                f"but got batch_size={config.batch_size}, workers={self.ranks.world_size}"
            )
        # what compiling needs: with compile: auto, a missing compiler means training eagerly; data-parallel
        # workers train eagerly whatever compile says (docs/search_spaces.md), and need none
        self.missing_compiler = missing_compiler() if config.compile and not self.ranks.distributed else None
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
        try:
            self.prompt_ids = self.corpus.vocabulary.encode(tokenize(config.prompt), f"the corpus {self.corpus.source}")
        except UnknownTokenError as exc:
            raise UnknownTokenError(f"prompt {config.prompt!r} (the greedy sample's start): {exc}") from None
        if config.sample_tokens > 0 and not self.prompt_ids:
            raise ConfigError(
                f"prompt must give at least one {config.tokenizer} token when sample_tokens > 0, "
                f"but got {config.prompt!r}"
            )

        self.device = device if device is not None else resolve_device(config.device)
        self.autocast_dtype = resolve_precision(config.precision, self.device, config.d_model)
        torch.manual_seed(config.seed)
        self.model = GPT(fitting(model_config(config, self.corpus.vocab_size), config.optimizer, self.device))
        self.model.to(self.device)
        self.eager = self.ranks.wrap(self.model, self.device)  # the training step's
        self.forward = self.eager  # compiled from the start, or later with compile: auto
        if config.compile is True and not self.ranks.distributed:
            self.compile()
        self.epoch_steps = steps_per_epoch(config, len(self.corpus.train))
        # The lr schedule's plan: epoch E of this run ends at step plan_base[1] + (E - plan_base[0]) * epoch_steps.
        # (0, 0) but in a run resumed with another epoch size: the epoch and step it resumed at.
        self.plan_base = (0, 0)
        self.total_steps = self.steps_at(config.epochs)
        self.optimizer = make_optimizer(config, self.model, self.total_steps)
        # The batch order has its own generator, so it is the same whatever else draws random numbers.
        self.generator = torch.Generator().manual_seed(config.seed)
        # The corpus's numpy arrays (read-only when Ray hands them over) become tensors here: a copy of
        # each split, in its compact dtype, on the trial's device.
        self.train_tokens = torch.tensor(self.corpus.train, device=self.device)
        self.valid_tokens = torch.tensor(self.corpus.valid, device=self.device)
        self.epoch = 0
        self.tokens_seen = 0
        self.epoch_seconds: Optional[float] = None  # the last epoch's, for the pace under a deadline (checkpointed)
        # the last epoch's report (a search's checkpoint written and sent to Tune): part of the pace a deadline plans
        # by. A checkpoint is written inside the report, so it keeps the report before (the epochs' are alike).
        self.report_seconds = 0.0
        self._activations: dict[str, torch.Tensor] = {}
        self._grad_norm: Optional[torch.Tensor] = None  # the last step's gradient norm, before clipping
        self._compiling = self.compiled  # compile: true compiles in the first step
        self._compile_seconds = 0.0  # what the epoch's first step took over the others, where it compiled
        # compile: auto's check of what compiling gained: the last eager epoch's tokens/s (past its first
        # PACE_SKIPS_STEPS steps, on ``clock``), whether a compiled epoch is still to be compared with it, and
        # whether it was, and lost (then this trial stays eager, after a resume too)
        self._step_rate: Optional[float] = None  # the last epoch's, measured so
        self._eager_rate: Optional[float] = None
        self._check_compile = False
        self._compile_declined = False

    # --- the loop

    def fit(
        self, callback: Optional[Callable[[Metrics], None]] = None, deadline: Optional[float] = None
    ) -> list[Metrics]:
        """Train the remaining epochs. Past ``deadline`` (a time on ``clock``) it stops mid-epoch, and
        returns the epochs finished (and passed to ``callback``) before it."""
        history = []
        if deadline is None:  # a plan a deadline shortened (in a run this one resumes) ends with the run again
            self._plan(self.steps_at(self.config.epochs))
        while self.epoch < self.config.epochs:
            if deadline is not None and self.epoch_seconds is not None:
                self.fit_schedule_to(deadline, self.epoch_seconds + self.report_seconds)
            try:
                metrics = self.run_epoch(deadline)
            except DeadlineReached:
                break  # the cut epoch is neither reported nor checkpointed
            history.append(metrics)
            if callback is not None:
                reported = self.clock()
                callback(metrics)
                self.report_seconds = self.clock() - reported
        return history

    def fit_schedule_to(self, deadline: float, epoch_seconds: float) -> None:
        """End a decaying lr schedule that would outlast ``deadline`` with the last epoch before it, at the
        pace of ``epoch_seconds`` (see :func:`epochs_that_fit`). A constant schedule and Noam have no end to move.
        """
        c = self.config
        if c.optimizer == "noam" or c.lr_schedule == "constant" or epoch_seconds <= 0:
            return
        room = max(0.0, (deadline - self.clock()) / epoch_seconds)  # the epochs' worth of time left
        fit = epochs_that_fit(room, self.epoch, self.planned_epochs, c.epochs)
        self._plan(self.steps_at(self.ranks.first(fit, self.device)))  # one plan for every rank

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

    @property
    def compile_key(self) -> tuple:  # what a compiled step is for: model shape, batch, window, mode, device, dtype
        c = self.config
        return (self.model.cfg, c.batch_size, c.seq_len, c.compile_mode, self.device, self.autocast_dtype)

    def compile(self) -> None:
        """Train through torch.compile from the next step on (validation and sampling stay eager)."""
        self.forward = compile_model(self.model, self.config.compile_mode, self.compile_key)
        self._compiling = True  # the next step compiles: the epoch's pace leaves that out

    @property
    def compiled(self) -> bool:
        return self.forward is not self.eager

    def compile_pays(self) -> bool:
        """compile: auto's choice before each epoch (see ``AUTO_COMPILE_AFTER_S``): whether to compile now."""
        return (
            not self._compile_declined
            and not self.ranks.distributed
            and auto_compile_pays(
                self.compile_key,
                self.device.type,
                self.autocast_dtype,
                missing_compiler=self.missing_compiler,
                epoch=self.epoch,
                planned_epochs=self.planned_epochs,
                epoch_seconds=self.epoch_seconds,
            )
        )

    # --- epochs

    def check_compile(self) -> None:
        """compile: auto, after an epoch: keep the compiled model only where its steps beat the eager ones
        before by ``AUTO_COMPILE_MIN_SPEEDUP``, else train eagerly from the next epoch on (the two share
        their parameters, so nothing else changes); an eager epoch's pace is what the next check compares with."""
        if not self.compiled:
            self._eager_rate = self._step_rate if self._step_rate is not None else self._eager_rate
            return
        if not self._check_compile:
            return
        pays = compiled_pays_off(self._eager_rate, self._step_rate)
        if pays is None and self._eager_rate is not None:
            return  # this epoch was too short to time: the next compiled one is compared
        self._check_compile = False  # compared, or nothing to compare with (compiled from the first epoch)
        if pays is False:
            note_compile_did_not_pay(self.compile_key, self.epoch, self._eager_rate, self._step_rate)
            self._compile_declined = True
            self.forward = self.eager

    def run_epoch(self, deadline: Optional[float] = None) -> Metrics:
        if self.config.compile == "auto" and not self.compiled and self.compile_pays():
            self.compile()
            self._check_compile = True
        start, begun = time.perf_counter(), self.clock()
        train_loss, train_accuracy, tokens, train_seconds = self.train_epoch(deadline)
        valid_loss, valid_accuracy = self.validate()
        if not math.isfinite(valid_loss):  # the epoch's last steps broke the weights: as a training loss that did
            raise self._diverged(f"validation loss became {valid_loss} after epoch {self.epoch + 1}")
        self.epoch += 1
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
            "precision_used": PRECISION_NAMES[self.autocast_dtype],
            "sample": self.sample(),
        }
        if self.config.compile == "auto":
            self.check_compile()
        if self.config.is_log_model_params_grads:
            metrics.update(param_grad_stats(self.model, self._grad_norm, self.config.grad_norm_clip))
        if self.config.is_log_model_activations:
            metrics.update(activation_stats(self._activations))
        metrics["seconds"] = time.perf_counter() - start
        # the pace a deadline plans by: without the one-off compilation, which would plan the lr's end an epoch short
        self.epoch_seconds = self.clock() - begun - self._compile_seconds
        return metrics

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return epoch_batches(self.train_tokens, self.config, self.generator, self.steps_at(self.epoch))

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
        if self.ranks.distributed and c.dropout > 0:
            # each rank's own dropout masks (one seed repeated rank 0's masks on every rank's rows), drawn from the
            # seed, epoch and rank alone, so that a resumed epoch draws the masks the run would have drawn
            torch.manual_seed(((c.seed * 1_000_003 + self.epoch) * 65_537 + self.ranks.rank) % 2**63)
        clip = c.grad_norm_clip
        compiling, self._compiling, self._compile_seconds = self._compiling, False, 0.0
        start = time.perf_counter()
        first_step = 0.0
        timed = c.compile == "auto"  # the pace compile: auto compares, past the epoch's first steps
        mark: Optional[tuple[float, int]] = None  # (clock, tokens) where that pace starts
        ranks = self.ranks
        for step, (x, y) in enumerate(self._batches()):  # x, y: (B, T)
            if deadline is not None and ranks.any_true(self.clock() >= deadline, self.device):  # all ranks stop
                raise DeadlineReached(f"the deadline passed in epoch {self.epoch + 1}, after {step} of its steps")
            weight = 1.0
            if ranks.distributed:
                rows = x.shape[0]
                x, y = ranks.shard(x), ranks.shard(y)  # (B / world_size, T)
                weight = ranks.loss_weight(x.shape[0], rows)
            try:
                logits, loss = self._forward_backward(x, y, weight)
            except Exception as exc:  # torch.compile's own (a compiler that does not work, say) in its first step
                if not (compiling and step == 0) or isinstance(exc, torch.OutOfMemoryError):  # memory: not compiling's
                    raise
                if c.compile != "auto":
                    compiler = "Triton" if self.device.type == "cuda" else "the C++ compiler (CXX)"
                    raise ConfigError(
                        f"compile true: torch.compile failed in the first step ({type(exc).__name__}: "
                        f"{first_line(exc)[:300]}); fix {compiler}, or use compile auto (which trains eagerly where "
                        "compiling fails) or false"
                    ) from None
                self._train_eagerly(exc)
                logits, loss = self._forward_backward(x, y, weight)
            self._grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip, foreach=True)
            self.optimizer.step()  # and the lr schedule's
            n = y.numel()
            if n:  # a rank's share of a short last batch may be empty: its mean loss over nothing is NaN
                loss_sum += loss.detach() * n
                correct += (logits.detach().argmax(dim=-1) == y).sum()
                tokens += n
            if (step + 1) % DIVERGENCE_CHECK_EVERY == 0 and not ranks.all_true(
                bool(torch.isfinite(loss_sum)), self.device
            ):
                break
            if compiling and step == 0:
                first_step = time.perf_counter() - start  # torch.compile compiles on the host, in the first call
            if timed and step == PACE_SKIPS_STEPS - 1:
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)  # once: the pace starts where these steps have run
                mark = (self.clock(), tokens)
        local_tokens = tokens
        if ranks.distributed:  # the global batches' sums: every rank's rows
            total_loss, total_correct, total_tokens = ranks.sum(loss_sum, correct, tokens)
            loss_sum, correct, tokens = torch.tensor(total_loss), torch.tensor(total_correct), int(total_tokens)
        self.tokens_seen += tokens
        mean_loss = loss_sum.item() / max(tokens, 1)
        seconds = time.perf_counter() - start
        self._step_rate = None
        if mark is not None and local_tokens > mark[1]:
            elapsed = self.clock() - mark[0]  # after .item(), which waited for the device's last step
            self._step_rate = (local_tokens - mark[1]) / elapsed if elapsed > 0 else None
        steps = tokens // (c.batch_size * c.seq_len)
        if compiling and steps > 1:
            self._compile_seconds = max(0.0, first_step - (seconds - first_step) / (steps - 1))
        if not math.isfinite(mean_loss):
            raise self._diverged(f"training loss became {mean_loss} in epoch {self.epoch + 1}")
        return mean_loss, correct.item() / max(tokens, 1), tokens, seconds

    def _diverged(self, what: str) -> DivergedError:
        return DivergedError(f"{what} (lr={self.config.lr}); the run is stopped and no checkpoint is written")

    def _forward_backward(
        self, x: torch.Tensor, y: torch.Tensor, weight: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        with self._autocast():
            logits = self.forward(x)  # (B, T, V)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        self.optimizer.zero_grad()
        (loss * weight if weight != 1.0 else loss).backward()
        return logits, loss

    def _train_eagerly(self, exc: Exception) -> None:
        """compile: auto's way out where torch.compile fails: eager training, as without a compiler."""
        note_compile_failed(exc, self.epoch + 1)
        self.forward = self.eager

    @torch.no_grad()
    def validate(self) -> tuple[float, float]:
        """A deterministic full pass over the valid split: mean loss and token accuracy."""
        self.model.eval()
        c = self.config
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        tokens = 0
        hooks = activation_hooks(self.model, self._activations) if c.is_log_model_activations else []
        ranks = self.ranks
        try:
            batches = valid_batches(self.valid_tokens, c.valid_loader, c.batch_size, c.seq_len, c.seed)
            for i, (x, y) in enumerate(batches):
                if i % ranks.world_size != ranks.rank:
                    continue  # another rank's batch: together they validate on the whole split
                with self._autocast():
                    logits = self.model(x)  # eager: a compiled eval graph costs more than the one pass it speeds up
                loss_sum += F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="sum")
                correct += (logits.argmax(dim=-1) == y).sum()
                tokens += y.numel()
                for hook in hooks:  # activation statistics from the first batch are enough
                    hook.remove()
                hooks = []
        finally:
            for hook in hooks:  # a rank that got no batch (fewer than the ranks), or a failed pass
                hook.remove()
        if ranks.distributed:
            total_loss, total_correct, tokens = ranks.sum(loss_sum, correct, tokens)
            return total_loss / tokens, total_correct / tokens
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

    # --- checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain values only, so it loads with ``torch.load(weights_only=True)``."""
        return {
            "format": checkpoint.CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "vocabulary": list(self.corpus.vocabulary.itos),
            "corpus_sha256": self.corpus.sha256,
            "epoch": self.epoch,
            "tokens_seen": self.tokens_seen,
            "epoch_seconds": self.epoch_seconds,
            "report_seconds": self.report_seconds,
            "eager_tokens_per_sec": self._eager_rate,  # compile: auto's, to compare a compiled epoch with
            "compile_declined": self._compile_declined,
            "plan_base": list(self.plan_base),
            "total_steps": self.total_steps,  # the plan a deadline may have shortened
            "precision_used": PRECISION_NAMES[self.autocast_dtype],  # what precision auto resolved to
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": checkpoint.rng_states(self.generator, self.device),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        checkpoint.check_resumable(state, self.config, self.corpus)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(checkpoint.optimizer_state(state))
        checkpoint.restore_rng_states(state["rng"], self.generator, self.device)
        self.epoch = int(state["epoch"])
        self.tokens_seen = int(state["tokens_seen"])
        self.epoch_seconds = state.get("epoch_seconds")
        self.report_seconds = float(state.get("report_seconds") or 0.0)  # absent in older checkpoints
        self._eager_rate = state.get("eager_tokens_per_sec")
        self._compile_declined = bool(state.get("compile_declined", False))
        used = resumed_precision(state.get("precision_used"), self.config.precision, self.device, self.autocast_dtype)
        if used != self.autocast_dtype:  # auto's probe chose otherwise here: the run goes on as it trained
            self.autocast_dtype = used
            if self.compiled:
                self.compile()  # for this dtype
        # The schedule is planned again from the step the checkpoint reached: at the epoch size it trained at, as an
        # uninterrupted run plans it (a plan a deadline shortened is kept: the next epoch lengthens it by the same
        # rule); at another (batches_per_epoch or compile changed), the epochs left are counted at the new size.
        saved_total = state.get("total_steps")  # absent in older checkpoints
        if checkpoint.saved_epoch_steps(state, self.config, len(self.corpus.train)) == self.epoch_steps:
            self.plan_base = tuple(int(v) for v in state.get("plan_base", (0, 0)))
            same_epochs = state["config"].get("epochs") == self.config.epochs
            self._plan(int(saved_total) if same_epochs and saved_total else self.steps_at(self.config.epochs))
        else:
            self.plan_base = (self.epoch, self.optimizer.steps_taken)
            self._plan(self.steps_at(self.config.epochs))

    def save_checkpoint(self, directory: str | os.PathLike) -> Path:
        """Write ``checkpoint.pt`` atomically: a crash mid-write leaves the previous file intact."""
        return checkpoint.save(self.state_dict(), directory)

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Resume from ``path`` (a checkpoint file, or the directory holding ``checkpoint.pt``)."""
        path, state = checkpoint.read(path, self.device)
        with checkpoint.refusals_name(path):
            self.load_state_dict(state)
