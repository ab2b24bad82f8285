"""This process's rank among the workers that train one trial together, over torch.distributed (not Ray).

Each worker takes rows ``rank::world_size`` of every global batch ``(B, T)``, so that together they train
on exactly the batches one worker would; the gradients are averaged by DistributedDataParallel, and the
metrics' sums are added up over the ranks here. A world of one is the single-process trainer: every
method is then a no-op, so it costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    """``rank`` of ``world_size`` workers in torch.distributed's default process group."""

    rank: int = 0
    world_size: int = 1

    @classmethod
    def of_process_group(cls) -> Ranks:
        """The default process group's ranks (one worker where there is none)."""
        if not dist.is_available() or not dist.is_initialized():
            return cls()
        return cls(dist.get_rank(), dist.get_world_size())

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """The training step's model: DistributedDataParallel's wrapper where several workers train it."""
        if not self.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        # the model's buffers are constants (no batch statistics): nothing to send before every step
        device_ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids, forward_sync_buffers=False)

    @property
    def is_first(self) -> bool:
        """Rank 0: the one that writes checkpoints and whose report stands for the trial."""
        return self.rank == 0

    def shard(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a global batch: ``(B, ...)`` -> ``(ceil((B - rank) / world_size), ...)``."""
        return x[self.rank :: self.world_size] if self.distributed else x

    def loss_weight(self, local_rows: int, global_rows: int) -> float:
        """What this rank's mean loss is scaled by so that DDP's average of the ranks' gradients is the
        gradient of the global batch's mean loss, where the rows do not split evenly."""
        return local_rows * self.world_size / global_rows if self.distributed else 1.0

    def sum(self, *values: torch.Tensor | float) -> list[float]:
        """Each value added up over the ranks (one collective for all of them)."""
        if not self.distributed:
            return [float(v) for v in values]
        device = next((v.device for v in values if isinstance(v, torch.Tensor)), torch.device("cpu"))
        stacked = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device) for v in values])
        dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
        return stacked.tolist()

    def any_true(self, flag: bool, device: torch.device) -> bool:
        """Whether ``flag`` holds on some rank (a deadline one rank's clock has passed, say)."""
        return not self.all_true(not flag, device)

    def first(self, value: int, device: torch.device) -> int:
        """Rank 0's ``value`` on every rank: a decision each rank would take from its own clock."""
        if not self.distributed:
            return value
        tensor = torch.tensor([value], dtype=torch.long, device=device)
        dist.broadcast(tensor, src=0)
        return int(tensor.item())

    def all_true(self, flag: bool, device: torch.device) -> bool:
        """Whether ``flag`` holds on every rank: ranks that must stop together decide together."""
        if not self.distributed:
            return flag
        value = torch.tensor([int(flag)], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
        return bool(value.item())
