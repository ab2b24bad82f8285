"""The origin's data path, for comparison: labml's per-item Dataset, a RandomSampler and a collate.

As in labml's ``SequentialUnBatchedDataset`` + ``DataLoader(..., sampler=RandomSampler(...),
collate_fn=transpose_batch)``: each item slices one ``seq_len + 1`` window from the token tensor,
and the collate stacks the items sequence-first ``(T, B)``.
"""

from __future__ import annotations

import random

import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler


class SequentialUnBatchedDataset(Dataset):
    def __init__(self, data: torch.Tensor, seq_len: int, is_random_offset: bool = True) -> None:
        self.data = data
        self.seq_len = seq_len
        self.offset = random.randint(0, seq_len - 1) if is_random_offset else 0

    def __len__(self) -> int:
        return (self.data.shape[0] - 1 - self.offset) // self.seq_len

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = self.offset + idx * self.seq_len
        end = start + self.seq_len
        return self.data[start:end], self.data[start + 1 : end + 1]


def transpose_batch(batch: list) -> tuple[torch.Tensor, torch.Tensor]:
    transposed = list(zip(*batch))
    return torch.stack(transposed[0], dim=1), torch.stack(transposed[1], dim=1)


def origin_loader(data: torch.Tensor, batch_size: int, seq_len: int, replacement: bool) -> DataLoader:
    dataset = SequentialUnBatchedDataset(data.long(), seq_len)
    sampler = RandomSampler(dataset, replacement=replacement)
    return DataLoader(dataset, batch_size=batch_size, collate_fn=transpose_batch, sampler=sampler)
