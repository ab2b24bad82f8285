"""A prepared GPU check: artune's trainer on CUDA, without Ray or Optuna (only torch is needed).

    python bench/gpu_check.py                 # on a CUDA machine: the origin-sized model
    python bench/gpu_check.py --device cpu --small --steps 3   # a dry run of the script itself

For fp32 (TF32 matmuls), bf16 autocast and torch.compile (bf16) it prints training tokens/s and
model-FLOPs utilisation against a bf16/tf32 matmul ceiling measured in the same run, then checks that
the first steps' losses on the GPU agree with the CPU's within tolerance. Sized to finish in well
under 5 minutes on an H100. Writes bench/out/gpu_check.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from artune.config import TrainConfig  # noqa: E402
from artune.data import load_corpus  # noqa: E402
from artune.train import Trainer  # noqa: E402
from bench.run import flops_per_token, write_report  # noqa: E402  (one FLOP count for every MFU figure)

ORIGIN = dict(d_model=512, n_layers=6, n_heads=8, seq_len=512, batch_size=16)  # labml's defaults
SMALL = dict(d_model=128, n_layers=4, n_heads=4, seq_len=64, batch_size=12)


def matmul_ceiling(device: torch.device, dtype: torch.dtype, iters: int = 20) -> float:
    n = 8192 if device.type == "cuda" else 1024  # big enough to saturate an H100; a CPU dry run stays quick
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        a @ b
    synchronize(device)
    return 2 * n**3 * iters / (time.perf_counter() - start)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(config: TrainConfig, corpus, device: torch.device, warmup: int, steps: int) -> dict:
    trainer = Trainer(dataclasses.replace(config, batches_per_epoch=warmup), corpus, device=device)
    trainer.train_epoch()  # warm-up: allocator, kernels, and the compile when there is one
    trainer.config = dataclasses.replace(config, batches_per_epoch=steps)
    synchronize(device)
    loss, _, tokens, seconds = trainer.train_epoch()  # ends with a host read, so the GPU has finished
    return {"tokens_per_sec": tokens / seconds, "loss": loss}


def first_losses(config: TrainConfig, corpus, device: torch.device, steps: int) -> list[float]:
    """Per-step training losses of the first ``steps`` steps (same seed, same batches)."""
    trainer = Trainer(dataclasses.replace(config, batches_per_epoch=1), corpus, device=device)
    losses = []
    for _ in range(steps):
        loss, *_ = trainer.train_epoch()
        losses.append(loss)
    return losses


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="the small shape instead of the origin's")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--compare-steps", type=int, default=3, help="steps compared against the CPU")
    parser.add_argument("--json", default=str(Path(__file__).parent / "out" / "gpu_check.json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            print("error: no CUDA device visible to torch", file=sys.stderr)
            return 2
        torch.backends.cuda.matmul.allow_tf32 = True  # 'fp32' on a GPU means TF32 matmuls here
        torch.backends.cudnn.allow_tf32 = True
    corpus = load_corpus("tiny_shakespeare", "character", os.environ.get("ARTUNE_DATA_DIR"))
    shape = SMALL if args.small else ORIGIN
    base = TrainConfig(**shape, optimizer="adamw", lr=3e-4, epochs=1, device=device.type, sample_tokens=0)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    report = {"device": name, "torch": torch.__version__, "shape": shape, "variants": {}}
    ceilings = {
        "fp32": matmul_ceiling(device, torch.float32),
        "bf16": matmul_ceiling(device, torch.bfloat16 if device.type == "cuda" else torch.float32),
    }
    report["matmul_ceiling_tflops"] = {k: v / 1e12 for k, v in ceilings.items()}
    fpt = flops_per_token(base, corpus.vocab_size)
    variants = {
        "fp32 (tf32)": (dataclasses.replace(base, precision="fp32"), "fp32"),
        "bf16 autocast": (dataclasses.replace(base, precision="bf16"), "bf16"),
        "bf16 + compile": (dataclasses.replace(base, precision="bf16", compile=True), "bf16"),
    }
    print(f"{name}: matmul ceiling fp32/tf32 {ceilings['fp32'] / 1e12:.1f} TFLOP/s, bf16 {ceilings['bf16'] / 1e12:.1f} TFLOP/s")
    for label, (config, ceiling) in variants.items():
        start = time.perf_counter()
        r = measure(config, corpus, device, warmup=3, steps=args.steps)
        r["mfu"] = r["tokens_per_sec"] * fpt / ceilings[ceiling]
        r["wall_s"] = time.perf_counter() - start
        report["variants"][label] = r
        print(f"{label:<16} {r['tokens_per_sec']:>12,.0f} tok/s   MFU {r['mfu']:6.1%} of {ceiling}   ({r['wall_s']:.0f} s with warm-up)")
    if device.type == "cuda":
        cpu_config = dataclasses.replace(base, device="cpu")
        gpu = first_losses(dataclasses.replace(base, precision="fp32"), corpus, device, args.compare_steps)
        cpu = first_losses(cpu_config, corpus, torch.device("cpu"), args.compare_steps)
        worst = max(abs(g - c) / abs(c) for g, c in zip(gpu, cpu))
        report["cpu_agreement"] = {"gpu": gpu, "cpu": cpu, "max_relative_difference": worst, "ok": worst < 1e-2}
        print(f"first {args.compare_steps} step losses, GPU {['%.4f' % x for x in gpu]} vs CPU {['%.4f' % x for x in cpu]}: "
              f"max relative difference {worst:.2e} ({'ok' if worst < 1e-2 else 'MISMATCH'})")
    write_report(report, Path(args.json))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
