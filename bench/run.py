"""artune's benchmarks, each side by side with its baseline in one run (the machine is noisy).

    python -m bench                  # everything
    python -m bench trainer sampler  # some sections
    python -m bench --json out.json  # also write the figures as JSON (default: bench/out/bench.json)

Sections:
  trainer  artune's Trainer against a bare eager PyTorch loop (bench/baseline.py), same model
           shape (d_model 128, 4 layers, 4 heads, seq_len 64, batch 12), interleaved rounds;
           tokens/s and model-FLOPs utilisation against a matmul ceiling measured in the same run.
  sampler  batches/s of artune's shuffled sampler against the origin's per-item Dataset +
           RandomSampler + collate, at batch 16 x seq_len 512, same sampling semantics.
  search   wall time of an 8-trial search against the trials' own training time / concurrency.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from artune.config import TrainConfig
from artune.data import load_corpus, shuffled_batches
from artune.train import Trainer

SMALL = dict(d_model=128, n_layers=4, n_heads=4, seq_len=64, batch_size=12)


def matmul_ceiling(dtype: torch.dtype = torch.float32, n: int = 1024, seconds: float = 1.0) -> float:
    """Measured FLOP/s of a square matmul on this process's threads."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - start)


def flops_per_token(config: TrainConfig, vocab_size: int) -> float:
    """Training FLOPs per token: 6 per weight (forward + backward) plus attention's T-dependent part."""
    d, L, T = config.d_model, config.n_layers, config.seq_len
    weights = L * (4 * d * d + 2 * d * config.ff_width) + vocab_size * d  # blocks + output layer
    return 6 * weights + 12 * L * d * T


def trainer_tokens_per_sec(config: TrainConfig, corpus: Any, steps: int) -> float:
    trainer = Trainer(config.__class__(**{**config.to_dict(), "batches_per_epoch": 3}), corpus)
    trainer.train_epoch()  # warm-up (allocator, kernels)
    trainer.config = config.__class__(**{**config.to_dict(), "batches_per_epoch": steps})
    _, _, tokens, seconds = trainer.train_epoch()
    return tokens / seconds


def bench_trainer(corpus: Any, rounds: int, steps: int) -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).parent))
    from baseline import run_baseline

    config = TrainConfig(**SMALL, optimizer="adamw", epochs=1)
    bare, ours = [], []
    for _ in range(rounds):  # interleaved, so both see the same machine noise
        bare.append(run_baseline(corpus.train, corpus.vocab_size, steps=steps, **SMALL))
        ours.append(trainer_tokens_per_sec(config, corpus, steps))
    ceiling = matmul_ceiling()
    fpt = flops_per_token(config, corpus.vocab_size)
    b, o = statistics.median(bare), statistics.median(ours)
    return {
        "shape": SMALL, "steps_per_round": steps, "rounds": rounds,
        "bare_tokens_per_sec": b, "artune_tokens_per_sec": o, "ratio": o / b,
        "matmul_fp32_gflops": ceiling / 1e9, "artune_mfu": o * fpt / ceiling, "bare_mfu": b * fpt / ceiling,
        "step_ms": 1000 * SMALL["batch_size"] * SMALL["seq_len"] / o,
    }


def _rate(make: Callable[[], Any], seconds: float) -> float:
    """Batches per second drawn from fresh epochs of ``make()`` for about ``seconds``."""
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in make():
            count += 1
            if time.perf_counter() - start >= seconds:
                break
    return count / (time.perf_counter() - start)


def bench_sampler(corpus: Any, seconds: float, step_ms: float | None) -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).parent))
    from origin_data import origin_loader

    batch_size, seq_len = 16, 512
    tokens = corpus.train
    generator = torch.Generator().manual_seed(0)
    results: dict[str, Any] = {"batch_size": batch_size, "seq_len": seq_len}
    for replacement in (False, True):
        key = "with_replacement" if replacement else "without_replacement"
        ours = _rate(lambda: shuffled_batches(tokens, batch_size, seq_len, generator, replacement), seconds)
        origin = _rate(lambda: origin_loader(tokens, batch_size, seq_len, replacement), seconds)
        results[key] = {"artune_batches_per_sec": ours, "origin_batches_per_sec": origin, "ratio": ours / origin}
    ms = 1000 / results["without_replacement"]["artune_batches_per_sec"]
    results["artune_batch_ms"] = ms
    if step_ms:
        results["share_of_small_training_step"] = ms / step_ms
    return results


def bench_search(trials: int, concurrency: int) -> dict[str, Any]:
    from bench.search_overhead import measure

    return measure(trials=trials, concurrency=concurrency)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sections", nargs="*", default=["trainer", "sampler", "search"], choices=["trainer", "sampler", "search"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--json", default=str(Path(__file__).parent / "out" / "bench.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    corpus = load_corpus("tiny_shakespeare", "character", os.environ.get("ARTUNE_DATA_DIR"))
    report: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "threads": args.threads,
                    "torch": torch.__version__},
    }
    if "trainer" in args.sections:
        r = report["trainer"] = bench_trainer(corpus, args.rounds, args.steps)
        print(f"trainer  bare loop {r['bare_tokens_per_sec']:,.0f} tok/s  artune {r['artune_tokens_per_sec']:,.0f} tok/s  "
              f"ratio {r['ratio']:.2f}x  MFU {r['artune_mfu']:.0%} (bare {r['bare_mfu']:.0%}) of {r['matmul_fp32_gflops']:.0f} GFLOP/s fp32")
    if "sampler" in args.sections:
        step_ms = report.get("trainer", {}).get("step_ms")
        r = report["sampler"] = bench_sampler(corpus, 2.0, step_ms)
        for key in ("without_replacement", "with_replacement"):
            s = r[key]
            print(f"sampler  {key:<20} artune {s['artune_batches_per_sec']:,.0f} batches/s  origin {s['origin_batches_per_sec']:,.0f} batches/s  ratio {s['ratio']:.1f}x")
        share = r.get("share_of_small_training_step")
        print(f"sampler  one batch {r['artune_batch_ms']:.3f} ms" + (f" = {share:.2%} of a small-shape training step" if share else ""))
    if "search" in args.sections:
        r = report["search"] = bench_search(trials=8, concurrency=2)
        print(f"search   {r['trials']} trials, {r['concurrency']} at a time: wall {r['wall_s']:.1f} s, ideal {r['ideal_s']:.1f} s "
              f"(sum of trial training time / concurrency), overhead {r['ratio']:.2f}x")
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")
    return 0
