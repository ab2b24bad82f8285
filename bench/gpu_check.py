"""A prepared GPU check: artune's trainer on CUDA, without Ray or Optuna (only torch is needed).

    python bench/gpu_check.py                 # on a CUDA machine: the origin-sized model
    python bench/gpu_check.py --device cpu --small --steps 3   # a dry run of the script itself

For each position encoding (rotary, the default search's, and learned) it first checks that the
first steps' losses on the GPU agree with the CPU's within tolerance, then prints training tokens/s
and model-FLOPs utilisation against a bf16/tf32 matmul ceiling measured in the same run for fp32
(TF32 matmuls), bf16 autocast and torch.compile (bf16). Sized to finish in well under 5 minutes on
an H100. Writes bench/out/gpu_check.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
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
    """Training tokens/s over ``steps`` timed steps, after ``warmup`` untimed ones (epochs as needed)."""
    trainer = Trainer(dataclasses.replace(config, batches_per_epoch=warmup), corpus, device=device)
    trainer.train_epoch()  # warm-up: allocator, kernels, and the compile when there is one
    trainer.config = dataclasses.replace(config, batches_per_epoch=steps)
    synchronize(device)
    tokens = seconds = 0.0
    while tokens < steps * config.batch_size * config.seq_len:  # a big batch can make an epoch shorter than steps
        loss, _, n, s = trainer.train_epoch()  # ends with a host read, so the GPU has finished
        tokens, seconds = tokens + n, seconds + s
    return {
        "tokens_per_sec": tokens / seconds,
        "loss": loss,
        "steps": round(tokens / (config.batch_size * config.seq_len)),
    }


def first_losses(config: TrainConfig, corpus, device: torch.device, steps: int) -> list[float]:
    """Per-step training losses of the first ``steps`` steps (same seed, same batches)."""
    trainer = Trainer(dataclasses.replace(config, batches_per_epoch=1), corpus, device=device)
    losses = []
    for _ in range(steps):
        loss, *_ = trainer.train_epoch()
        losses.append(loss)
    return losses


def set_tf32(enabled: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def agreement(base: TrainConfig, corpus, device: torch.device, steps: int) -> dict:
    """The first steps' losses on the GPU against the CPU's: strict fp32 (TF32 off) and bf16 autocast."""
    cpu = first_losses(dataclasses.replace(base, device="cpu", precision="fp32"), corpus, torch.device("cpu"), steps)
    checks = {"fp32 (tf32 off)": ("fp32", False, 1e-3), "bf16 autocast": ("bf16", True, 2e-2)}
    result = {"cpu_fp32": cpu}
    try:
        for label, (precision, tf32, tolerance) in checks.items():
            set_tf32(tf32)
            gpu = first_losses(dataclasses.replace(base, precision=precision), corpus, device, steps)
            worst = max(abs(g - c) / abs(c) for g, c in zip(gpu, cpu))
            ok = worst <= tolerance
            result[label] = {"gpu": gpu, "max_relative_difference": worst, "tolerance": tolerance, "ok": ok}
            print(
                f"{base.position_encoding} positions, first {steps} step losses, "
                f"GPU {label} {['%.4f' % x for x in gpu]} "
                f"vs CPU fp32 {['%.4f' % x for x in cpu]}: max relative difference {worst:.1e}, "
                f"tolerance {tolerance:.0e}: {'ok' if ok else 'MISMATCH'}",
                flush=True,
            )
    finally:
        set_tf32(True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="the small shape instead of the origin's")
    parser.add_argument(
        "--batch-sizes",
        default=None,
        help="comma-separated batch sizes to measure (default: the shape's own, and 4x it on CUDA)",
    )
    parser.add_argument(
        "--position-encodings",
        default="rope,learned",
        help="comma-separated position encodings to measure (rope is the default search's)",
    )
    parser.add_argument(
        "--activation",
        default="gelu",
        help="the feed-forward's: gelu (the origin's), swiglu (the default search's) or relu2",
    )
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (the compile happens here)")
    parser.add_argument("--compare-steps", type=int, default=3, help="steps compared against the CPU")
    parser.add_argument("--json", default=str(Path(__file__).parent / "out" / "gpu_check.json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            print("error: no CUDA device visible to torch", file=sys.stderr)
            return 2
        set_tf32(True)  # 'fp32' on a GPU means TF32 matmuls here
    corpus = load_corpus("tiny_shakespeare", "character", os.environ.get("ARTUNE_DATA_DIR"))
    shape = SMALL if args.small else ORIGIN
    if args.batch_sizes:
        batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    else:
        batch_sizes = [shape["batch_size"], 4 * shape["batch_size"]] if device.type == "cuda" else [shape["batch_size"]]
    encodings = args.position_encodings.split(",")
    base = TrainConfig(
        **shape, activation=args.activation, optimizer="adamw", lr=3e-4, epochs=1, device=device.type, sample_tokens=0
    )
    bases = {encoding: dataclasses.replace(base, position_encoding=encoding) for encoding in encodings}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    report = {
        "device": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "shape": shape,
        "activation": args.activation,
        "steps": args.steps,
        "variants": {},
        "cpu_agreement": {},
    }
    json_path = Path(args.json)
    ceilings = {
        "fp32": matmul_ceiling(device, torch.float32),
        "bf16": matmul_ceiling(device, torch.bfloat16 if device.type == "cuda" else torch.float32),
    }
    report["matmul_ceiling_tflops"] = {k: v / 1e12 for k, v in ceilings.items()}
    fpt = flops_per_token(base, corpus.vocab_size)
    report["flops_per_token"] = fpt
    print(
        f"{name}, torch {torch.__version__}: matmul ceiling fp32/tf32 {ceilings['fp32'] / 1e12:.1f} TFLOP/s, "
        f"bf16 {ceilings['bf16'] / 1e12:.1f} TFLOP/s; {fpt / 1e6:.0f} MFLOP per token",
        flush=True,
    )
    if device.type == "cuda":  # the correctness check first: it must not be lost to a later failure
        for encoding, encoded in bases.items():
            try:
                report["cpu_agreement"][encoding] = agreement(encoded, corpus, device, args.compare_steps)
            except Exception as exc:  # noqa: BLE001 - a check script reports and goes on
                report["cpu_agreement"][encoding] = {"error": f"{type(exc).__name__}: {exc}"}
                print(f"agreement check ({encoding}) failed: {type(exc).__name__}: {exc}", flush=True)
            write_report(report, json_path)
    for encoding, batch_size in itertools.product(encodings, batch_sizes):
        base = dataclasses.replace(bases[encoding], batch_size=batch_size)
        variants = {
            "fp32 (tf32)": (dataclasses.replace(base, precision="fp32"), "fp32"),
            "bf16 autocast": (dataclasses.replace(base, precision="bf16"), "bf16"),
            "bf16 + compile": (dataclasses.replace(base, precision="bf16", compile=True), "bf16"),
        }
        if device.type == "cuda":  # CUDA graphs: for a step too short to hide its kernel launches
            variants["bf16 + compile, CUDA graphs"] = (
                dataclasses.replace(base, precision="bf16", compile=True, compile_mode="reduce-overhead"),
                "bf16",
            )
        for label, (config, ceiling) in variants.items():
            key = f"{label}, {encoding}, batch {batch_size}"
            start = time.perf_counter()
            try:  # a compiled variant of a new shape compiles afresh (the Trainer resets dynamo)
                r = measure(config, corpus, device, warmup=args.warmup, steps=args.steps)
            except Exception as exc:  # noqa: BLE001 - one variant failing must not hide the others
                report["variants"][key] = {"error": f"{type(exc).__name__}: {exc}"}
                print(f"{key:<40} failed: {type(exc).__name__}: {exc}", flush=True)
                continue
            finally:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            r.update(
                batch_size=batch_size,
                position_encoding=encoding,
                precision=ceiling,
                compile=config.compile,
                mfu=r["tokens_per_sec"] * fpt / ceilings[ceiling],
                wall_s=time.perf_counter() - start,
            )
            if device.type == "cuda":
                r["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
                torch.cuda.reset_peak_memory_stats(device)
            report["variants"][key] = r
            write_report(report, json_path)
            print(
                f"{key:<40} {r['tokens_per_sec']:>12,.0f} tok/s   MFU {r['mfu']:6.1%} of {ceiling}   "
                f"({r['wall_s']:.0f} s with warm-up)",
                flush=True,
            )
    write_report(report, json_path)
    print_table(report)
    return 0


def print_table(report: dict) -> None:
    """The GPU table of docs/benchmarks.md, in markdown."""
    ceiling = report["matmul_ceiling_tflops"]
    print(
        f"\n{report['device']}, torch {report['torch']}, {report.get('activation', 'gelu')} feed-forward; "
        f"matmul ceiling tf32 {ceiling['fp32']:.0f} / bf16 {ceiling['bf16']:.0f} TFLOP/s\n"
    )
    print("| variant | positions | batch | tokens/s | ms/step | MFU |")
    print("| --- | --- | --- | --- | --- | --- |")
    seq_len = report["shape"]["seq_len"]
    for key, r in report["variants"].items():
        if "error" in r:
            print(f"| {key} | | | failed: {r['error'][:60]} | | |")
            continue
        label = key.rsplit(", ", 2)[0]
        ms = 1000 * r["batch_size"] * seq_len / r["tokens_per_sec"]
        print(
            f"| {label} | {r['position_encoding']} | {r['batch_size']} | {r['tokens_per_sec']:,.0f} | {ms:.1f} "
            f"| {r['mfu']:.1%} of {r['precision']} |"
        )


if __name__ == "__main__":
    raise SystemExit(main())
