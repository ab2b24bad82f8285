"""The lr schedule's plan in epochs and steps: how many steps an epoch holds, and where a deadline ends it."""

from __future__ import annotations

from typing import Iterator

import torch

from artune.batches import train_batches
from artune.config import TrainConfig
from artune.data import num_sequential_batches, num_shuffled_batches

# Under a deadline, a decay's plan is lengthened only when the longer plan fits with this much of an
# epoch to spare: where the deadline falls near the end of an epoch, the pace's jitter would otherwise
# move the plan's end back and forth between two epochs, its lr up and down with it.
LENGTHEN_MARGIN = 0.25


def steps_per_epoch(config: TrainConfig, n_train_tokens: int) -> int:
    """Optimizer steps in one training epoch: the loader's full pass, capped by ``batches_per_epoch``.

    With ``compile`` (true or 'auto') the epoch's partial last batch is skipped (see
    :func:`epoch_batches`), so the lr schedule plans without it.
    """
    if config.train_loader == "sequential":
        full = num_sequential_batches(
            n_train_tokens, config.batch_size, config.seq_len, whole_only=config.whole_batches
        )
    else:
        full = num_shuffled_batches(n_train_tokens, config.batch_size, config.seq_len, whole_only=config.whole_batches)
    return full if config.batches_per_epoch is None else min(full, config.batches_per_epoch)


def epochs_that_fit(room: float, epoch: int, planned: int, epochs: int) -> int:
    """The epoch a decaying schedule's plan ends with, ``room`` epochs' worth of time before a deadline.

    Under a search's time budget a trial planned for more epochs than the budget leaves it
    would be cut with its lr still high, and a decay that never finished is most of what a
    decay gives. Before each epoch, the whole epochs that fit (at the last epoch's pace, which
    a checkpoint keeps, so a trial resumed in a new process fits its first epoch too), at most
    ``epochs``, set the schedule's end: it is planned again over that many epochs, from the
    steps already taken. The pace is measured anew each epoch, so the plan follows it (a first
    epoch slower than the rest planned one or two epochs short): it is shortened as soon as it
    no longer fits, and lengthened past ``planned`` only when the longer plan fits with
    ``LENGTHEN_MARGIN`` of an epoch to spare.
    """
    fit = epoch + max(1, int(room))
    if fit > planned:
        fit = max(planned, epoch + max(1, int(room - LENGTHEN_MARGIN)))
    return min(epochs, fit)


def epoch_batches(
    tokens: torch.Tensor, config: TrainConfig, generator: torch.Generator, planned_start: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The epoch's training batches ``(x, y)``, each ``(B, T)``: as many as :func:`steps_per_epoch` counts.

    ``planned_start`` is the step the plan counts to the start of this epoch.
    """
    c = config
    start = 0
    if c.train_loader == "sequential" and c.batches_per_epoch is not None:
        # a capped epoch starts where the one before it stopped (over the epochs, every batch of the
        # split), at the step the plan counts to it: in a run resumed with another cap, the batches
        # trained before the resume at their own cap, and this run's after it
        start = planned_start
    batches = train_batches(
        tokens,
        c.train_loader,
        c.batch_size,
        c.seq_len,
        generator,
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
