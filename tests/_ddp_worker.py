"""One rank of a two-process data-parallel training run, for tests/test_distributed.py.

``python -m tests._ddp_worker RANK WORLD_SIZE OUT_DIR [DEADLINE]``: joins a gloo process group (its rendezvous
a file in OUT_DIR), trains the config of ``config()`` (until ``DEADLINE``, a time.time(), where given) and writes
``rank<R>.pt``: each epoch's metrics and the rows of every batch this rank trained on. A world of one is the
single-process run the others are compared with.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from artune.config import TrainConfig
from artune.train import Trainer
from artune.train.ranks import Ranks


def config() -> TrainConfig:
    """The test's config, with the knobs of $DDP_WORKER_CONFIG (a JSON object) where a test gives some."""
    return TrainConfig.from_dict({**BASE.to_dict(), **json.loads(os.environ.get("DDP_WORKER_CONFIG", "{}"))})


BASE = TrainConfig(
    dataset="tiny_shakespeare",
    tokenizer="character",
    seq_len=16,
    batch_size=8,
    batches_per_epoch=6,
    epochs=2,
    d_model=32,
    n_layers=1,
    n_heads=2,
    dropout=0.0,
    lr=3e-3,
    optimizer="adamw",
    sample_tokens=0,
    device="cpu",
    compile=False,
    valid_loader="sequential",
    seed=7,
)


class RecordingTrainer(Trainer):
    """Keeps the rows of every batch this rank trained on; trains as the Trainer does."""

    seen: list[torch.Tensor]
    dropout_states: list[torch.Tensor]

    def _forward_backward(self, x, y, weight=1.0):  # type: ignore[no-untyped-def]
        self.seen.append(x.clone())
        self.dropout_states.append(torch.get_rng_state())  # what this step's dropout masks are drawn from
        return super()._forward_backward(x, y, weight)


def main(rank: int, world_size: int, out: Path, deadline: Optional[float] = None) -> None:
    torch.set_num_threads(1)
    if world_size > 1:
        # The ranks meet through a file in OUT_DIR: a TCP port picked free beforehand could be taken by then.
        rendezvous = f"file://{(out / 'rendezvous').resolve()}"
        dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=world_size)
    trainer = RecordingTrainer(config(), ranks=Ranks.of_process_group())
    trainer.seen, trainer.dropout_states = [], []
    history = trainer.fit(deadline=deadline)
    torch.save(
        {"history": history, "seen": trainer.seen, "dropout_states": trainer.dropout_states}, out / f"rank{rank}.pt"
    )
    if world_size > 1:
        dist.destroy_process_group()
    # gloo's run-loop thread may drop the last reference to a collective's tensor only after this, and if the
    # interpreter is finalizing by then, it dies taking the GIL and the process aborts (SIGABRT, "terminate called
    # without an active exception"; a race inside torch, 4 runs in 40 here). Everything is written: skip finalization.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), *map(float, sys.argv[4:]))
