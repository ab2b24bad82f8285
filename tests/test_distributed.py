"""Trials trained by several workers (DistributedDataParallel over gloo): the same batches and losses as one."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
GUARD_S = 300  # a hang guard, not a pace


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ranks(world_size: int, out: Path, shakespeare_path: Path) -> list[dict]:
    """Run tests/_ddp_worker.py as ``world_size`` real processes; each rank's record."""
    out.mkdir()
    port = _free_port()
    env = {**os.environ, "ARTUNE_DATA_DIR": str(shakespeare_path.parent)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests._ddp_worker", str(rank), str(world_size), str(port), str(out)],
            cwd=REPO,
            env=env,
        )
        for rank in range(world_size)
    ]
    for proc in procs:
        assert proc.wait(timeout=GUARD_S) == 0
    return [torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in range(world_size)]


@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory, shakespeare_path):
    tmp = tmp_path_factory.mktemp("ddp")
    return _ranks(1, tmp / "one", shakespeare_path)[0], _ranks(2, tmp / "two", shakespeare_path)


def test_two_workers_train_on_the_global_batches_of_one(one_and_two):
    one, (rank0, rank1) = one_and_two
    assert len(one["seen"]) == len(rank0["seen"]) == len(rank1["seen"]) == 12  # 2 epochs of 6 batches
    for whole, first, second in zip(one["seen"], rank0["seen"], rank1["seen"]):
        assert first.shape[0] == second.shape[0] == whole.shape[0] // 2
        assert torch.equal(whole[0::2], first) and torch.equal(whole[1::2], second)


def test_two_workers_reach_the_loss_of_one(one_and_two):
    one, ranks = one_and_two
    for rank in ranks:
        assert [m["epoch"] for m in rank["history"]] == [1, 2]
        for single, shared in zip(one["history"], rank["history"]):
            # the whole validation split's loss, after the same steps on the same global batches
            assert shared["valid_loss"] == pytest.approx(single["valid_loss"], abs=1e-3)
            assert shared["train_loss"] == pytest.approx(single["train_loss"], abs=1e-3)
            assert shared["tokens_seen"] == single["tokens_seen"]  # every rank's tokens
    # the ranks agree on every metric they report
    assert [m["valid_loss"] for m in ranks[0]["history"]] == [m["valid_loss"] for m in ranks[1]["history"]]
