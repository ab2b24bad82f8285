"""Data-parallel overhead: two workers at one thread each against one worker at two threads, same global batch.

    python -m bench ddp                       # as a section of the benches
    python -m bench.data_parallel --rounds 3  # alone

Each contender is a fresh process (two for the data-parallel one, joined by a gloo process group on
127.0.0.1) that trains the small shape's Trainer for a warm-up epoch and a timed one of ``steps`` global
batches; its figure is the timed epoch's tokens/s (every rank's tokens over the epoch's wall time). The
contenders alternate in rounds, so both see the same machine, and each is represented by its best round.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SMALL = dict(d_model=128, n_layers=4, n_heads=4, seq_len=64, batch_size=12)  # bench.run's small shape


def worker(rank: int, world_size: int, threads: int, steps: int, port: int) -> None:
    """One rank: train a warm-up epoch and a timed one; rank 0 prints the timed epoch's tokens/s."""
    import torch
    import torch.distributed as dist

    from artune.config import TrainConfig
    from artune.train import Trainer
    from artune.train.ranks import Ranks

    torch.set_num_threads(threads)
    if world_size > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    config = TrainConfig(
        **SMALL, batches_per_epoch=steps, epochs=2, sample_tokens=0, compile=False, device="cpu", seed=0
    )
    trainer = Trainer(config, ranks=Ranks.of_process_group())
    history = trainer.fit()
    if rank == 0:
        print(json.dumps({"tokens_per_sec": history[-1]["tokens_per_sec"]}), flush=True)
    if world_size > 1:
        dist.destroy_process_group()
    # as tests/_ddp_worker.py: gloo's run-loop thread can abort a finalizing interpreter; the result is printed
    os._exit(0)


def run(world_size: int, threads: int, steps: int) -> float:
    """The timed epoch's tokens/s of ``world_size`` workers at ``threads`` threads each."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "bench.data_parallel", "--worker"]
    procs = [
        subprocess.Popen(
            [*command, str(rank), str(world_size), str(threads), str(steps), str(port)],
            cwd=REPO,
            env=os.environ.copy(),
            stdout=subprocess.PIPE,
            text=True,
        )
        for rank in range(world_size)
    ]
    outputs = [proc.communicate(timeout=1800)[0] for proc in procs]
    if any(proc.returncode for proc in procs):
        raise RuntimeError(f"a worker failed: exit codes {[p.returncode for p in procs]}")
    return float(json.loads(outputs[0].strip().splitlines()[-1])["tokens_per_sec"])


def measure(rounds: int = 3, steps: int = 40) -> dict[str, Any]:
    one, two = [], []
    for _ in range(rounds):
        one.append(run(1, 2, steps))
        two.append(run(2, 1, steps))
    return {
        "shape": {**SMALL, "global_batch": SMALL["batch_size"], "steps": steps},
        "one_worker_two_threads_tokens_per_sec": max(one),
        "two_workers_one_thread_tokens_per_sec": max(two),
        "ratio": max(two) / max(one),
        "rounds": {"one_worker_two_threads": one, "two_workers_one_thread": two},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.data_parallel", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40, help="global batches in the timed epoch")
    parser.add_argument("--worker", nargs=5, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(*args.worker)
        return 0
    r = measure(args.rounds, args.steps)
    print(format_line(r))
    return 0


def format_line(r: dict[str, Any]) -> str:
    return (
        f"ddp        small shape, global batch {r['shape']['global_batch']}: one worker at 2 threads "
        f"{r['one_worker_two_threads_tokens_per_sec']:,.0f} tok/s  two workers at 1 thread "
        f"{r['two_workers_one_thread_tokens_per_sec']:,.0f} tok/s  ratio {r['ratio']:.2f}x"
    )


if __name__ == "__main__":
    raise SystemExit(main())
