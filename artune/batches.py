"""Batches: the shuffled, sequential and validation loaders over a corpus split's token tensor.

One batch layout everywhere: batch-first. ``x`` and ``y`` are int64 ``(B, T)`` and ``y`` is ``x``
shifted one token ahead, so ``y[b, t]`` is the token that follows ``x[b, t]`` in the corpus. The
token tensor keeps the corpus's compact dtype; a batch is cast to int64 only when it is cut.
"""

from __future__ import annotations

from typing import Iterator

import torch

from artune.data import (  # with the batch counts, torch-free: the driver checks a corpus before Ray starts
    num_offsets,
    num_windows,
)

Batch = tuple[torch.Tensor, torch.Tensor]


def _windows(tokens: torch.Tensor, offset: int, order: torch.Tensor, batch_size: int, seq_len: int) -> Iterator[Batch]:
    """Yield the windows ``tokens[offset + i * seq_len :][: seq_len + 1]`` for ``i`` in ``order``,
    ``batch_size`` at a time."""
    # A strided view (n, T + 1) of every window, no copy; each batch is one row gather, cheaper than
    # gathering B * (T + 1) element indices. index_select, not windows[rows]: advanced indexing of this
    # overlapping view is slower, and stalls whenever the cores are busy (see docs/benchmarks.md, 'Sampler').
    windows = tokens[offset:].unfold(0, seq_len + 1, seq_len)
    order = order.to(tokens.device)  # one copy per epoch; index_select wants its index beside the data (CUDA)
    for i in range(0, len(order), batch_size):
        chunk = windows.index_select(0, order[i : i + batch_size]).long()  # (B, T + 1)
        yield chunk[:, :-1], chunk[:, 1:]


def shuffled_batches(
    tokens: torch.Tensor,
    batch_size: int,
    seq_len: int,
    generator: torch.Generator,
    with_replacement: bool,
) -> Iterator[Batch]:
    """One epoch of randomly ordered, non-overlapping windows (the origin's shuffled loader).

    A random offset in ``[0, seq_len)`` is drawn once per call, so window boundaries move from
    epoch to epoch; the ``n`` windows after it are visited as a permutation (each at most once)
    or, ``with_replacement``, as ``n`` uniform draws. All draws from ``generator`` happen at the
    call, not lazily on iteration. The offset is capped so that at least one window fits.
    """
    n_tokens = len(tokens)
    offset = int(torch.randint(num_offsets(n_tokens, seq_len), (1,), generator=generator))
    n = num_windows(n_tokens, seq_len, offset)
    if with_replacement:
        order = torch.randint(n, (n,), generator=generator) if n else torch.empty(0, dtype=torch.long)
    else:
        order = torch.randperm(n, generator=generator)
    return _windows(tokens, offset, order, batch_size, seq_len)


def sequential_batches(
    tokens: torch.Tensor,
    batch_size: int,
    seq_len: int,
    start: int = 0,
    whole_only: bool = False,
) -> Iterator[Batch]:
    """The origin's SequentialDataLoader, batch-first: ``batch_size`` contiguous streams read in step.

    Row ``b`` of consecutive batches continues where it left off, so ``x[b]`` of one batch follows
    ``x[b]`` of the previous one in the text. The tail that does not fill the streams is dropped;
    the last chunk may be shorter than ``seq_len`` (``whole_only``: it is left out).

    ``start``: the batch the pass begins at; it wraps around to the batches before it, so a pass
    visits every batch once whatever its start. An epoch capped by ``batches_per_epoch`` starts where
    the previous one stopped, instead of training on the same first batches every epoch.
    """
    length = len(tokens) // batch_size
    streams = tokens[: length * batch_size].reshape(batch_size, length)  # (B, L)
    begins = range(0, (length - 1) // seq_len * seq_len if whole_only else length - 1, seq_len)
    start = start % len(begins) if len(begins) else 0
    for i in [*begins[start:], *begins[:start]]:
        t = min(seq_len, length - 1 - i)
        yield streams[:, i : i + t].long(), streams[:, i + 1 : i + 1 + t].long()


def valid_batches(tokens: torch.Tensor, loader: str, batch_size: int, seq_len: int, seed: int) -> Iterator[Batch]:
    """A deterministic full pass: the same batches on every call, so validation losses compare."""
    if loader == "sequential":
        return sequential_batches(tokens, batch_size, seq_len)
    if loader == "shuffled":
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(num_windows(len(tokens), seq_len), generator=generator)
        return _windows(tokens, 0, order, batch_size, seq_len)
    raise ValueError(f"valid_loader must be one of shuffled, sequential, but got {loader!r}")


def train_batches(
    tokens: torch.Tensor,
    loader: str,
    batch_size: int,
    seq_len: int,
    generator: torch.Generator,
    with_replacement: bool,
    start: int = 0,
    whole_only: bool = False,
) -> Iterator[Batch]:
    """One training epoch under the named loader (``start``, ``whole_only``: see sequential_batches)."""
    if loader == "shuffled":
        return shuffled_batches(tokens, batch_size, seq_len, generator, with_replacement)
    if loader == "sequential":
        return sequential_batches(tokens, batch_size, seq_len, start, whole_only)
    raise ValueError(f"train_loader must be one of shuffled, sequential, but got {loader!r}")
