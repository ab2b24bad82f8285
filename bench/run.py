"""artune's benchmarks, each side by side with its baseline in one run (the machine is noisy).

    python -m bench                            # everything
    python -m bench trainer sampler precision  # some sections (about four minutes on 2 busy cores)
    python -m bench --json out.json            # where to write the figures (default: bench/out/bench.json)

Every section interleaves its contenders in rounds, so both see the same machine. Other people's
jobs come and go in bursts that can stall a process for seconds, so each contender is represented
by its best round, the least disturbed one, and ratios are of best rounds; the JSON keeps every
round (a contender that is slow in every round under load, not just in some, has a real problem).

Sections:
  trainer    artune's Trainer (default config, adamw, fp32) against a bare eager PyTorch loop
             (bench/baseline.py) at the small shape (d_model 128, 4 layers, 4 heads, seq_len 64,
             batch 12): tokens/s, and model-FLOPs utilisation (MFU) against the fp32 matmul
             ceiling, the best FLOP/s of square matmuls of a few sizes measured in each round;
             also the FLOP/s of the model's own weight matmuls alone, the most a step could reach.
  attention  forward and backward of causal attention, scaled_dot_product_attention against the
             explicit matmuls and softmax that artune uses on a CPU for float32 contexts up to 64
             tokens and bf16 ones up to 512 (artune.models.causal_attention), at one thread and at
             --threads, for a few shapes; then a Trainer's step with each (the small shape and the
             default search's trial), alternating in --rounds epochs of 60 steps (medians). In
             float32, and in bf16 (autocast in the Trainer) where the CPU multiplies it natively.
  compile    the Trainer eager against compile: true at the small shape, rounds interleaved:
             tokens/s and MFU; and a new trial's first step, which holds the compilation, with an
             empty inductor cache and with a filled one; the training time that pays it back.
  sampler    time per batch of artune's shuffled sampler against the origin's per-item Dataset +
             RandomSampler + collate at batch 16 x seq_len 512 (same sampling semantics), one
             epoch each per round, and that time as a share of a small-shape training step.
  precision  step time of fp32 against bf16 autocast at the origin model (d_model 512, 6 layers,
             8 heads, seq_len 512) at a reduced batch (--precision-batch, default 1, instead of
             16: on a CPU without bf16 matmuls a bf16 step of batch 1 takes 30-90 s), and the
             validation loss after those steps on the same valid windows (should agree within 1%).
  search     wall time of an 8-trial search (3 epochs of about 5 s each, 2 at a time) against the
             trials' own training time / concurrency.
  ddp        two data-parallel workers (gloo) at one thread each against one worker at two threads,
             same global batch, at the small shape: tokens/s of each (bench/data_parallel.py).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from artune.batches import shuffled_batches, valid_batches
from artune.config import ConfigError, TrainConfig
from artune.data import load_corpus
from artune.train import Trainer, matmul_rate
from artune.train.device import PRECISION_NAMES

REPO = Path(__file__).resolve().parent.parent
SMALL = dict(d_model=128, n_layers=4, n_heads=4, seq_len=64, batch_size=12)
ORIGIN = dict(d_model=512, n_layers=6, n_heads=8, seq_len=512)  # TrainConfig's defaults; batch 16
SECTIONS = ["trainer", "attention", "compile", "sampler", "precision", "search", "ddp"]
# (batch, heads, seq_len, head_dim): the small shape, the default search's trial (windows of 256 since
# 2026-12-06; of 64 at its two widths before), and other contexts
ATTENTION_SHAPES = [
    (12, 4, 64, 32),
    (4, 4, 256, 32),
    (16, 4, 64, 24),
    (16, 4, 64, 32),
    (12, 4, 32, 32),
    (12, 4, 128, 32),
    (12, 4, 256, 32),
    (4, 8, 512, 64),
]


def matmul_ceiling(sizes: tuple[int, ...] = (256, 512, 1024, 2048)) -> tuple[float, int]:
    """The best fp32 FLOP/s over square matmuls of a few sizes, and the size that gave it.

    The best of several sizes, not the model's own (small, skinny) matmuls: those run well below
    the machine's matmul speed, and counting their slowness into the ceiling would flatter the MFU.
    """
    rates = {n: matmul_rate(n, n, n) for n in sizes}
    best = max(rates, key=rates.__getitem__)
    return rates[best], best


def model_matmul_rate(config: TrainConfig, vocab_size: int, seconds: float = 0.5) -> float:
    """FLOP/s of the model's own weight matmuls at this shape, run back to back and nothing else.

    Per block and for the output layer, with M = batch_size * seq_len rows: the forward
    ``(M, in) @ (in, out)``, the input gradient ``(M, out) @ (out, in)`` and the weight gradient
    ``(out, M) @ (M, in)``. What a step would reach if everything but these matmuls were free.
    """
    M, d, f = config.batch_size * config.seq_len, config.d_model, config.ff_width
    up = 2 * f if config.activation == "swiglu" else f  # swiglu's gate and value, one matmul
    layers = [(d, 3 * d), (d, d), (d, up), (f, d)] * config.n_layers + [(d, vocab_size)]
    shapes = [s for i, o in layers for s in ((M, i, o), (M, o, i), (o, M, i))]
    pairs = [(torch.randn(m, k), torch.randn(k, n)) for m, k, n in shapes]
    flops = sum(2 * m * k * n for m, k, n in shapes)
    count, start = 0, time.perf_counter()
    while count < 2 or time.perf_counter() - start < seconds:
        for a, b in pairs:
            a @ b
        count += 1
    return flops * count / (time.perf_counter() - start)


def flops_per_token(config: TrainConfig, vocab_size: int) -> float:
    """Training FLOPs per token, as nanoGPT and PaLM count them for MFU.

    6 per weight of a matmul (2 forward, 4 backward): 4 d^2 (qkv and proj) and 2 d d_ff (the MLP;
    3 d d_ff for swiglu, with its gate) per block, plus the d V of the output layer (tied to the
    embedding, whose lookup is free); plus attention's scores and weighted sum, 12 L d T, counted
    over the full T x T square although causal attention needs only its lower half. LayerNorm,
    softmax and the optimizer are not counted.
    """
    d, L, T = config.d_model, config.n_layers, config.seq_len
    mlp = (3 if config.activation == "swiglu" else 2) * d * config.ff_width
    weights = L * (4 * d * d + mlp) + vocab_size * d
    return 6 * weights + 12 * L * d * T


def trainer_tokens_per_sec(config: TrainConfig, corpus: Any, steps: int) -> float:
    trainer = Trainer(TrainConfig(**{**config.to_dict(), "batches_per_epoch": 3}), corpus)
    trainer.train_epoch()  # warm-up (allocator, kernels)
    trainer.config = TrainConfig(**{**config.to_dict(), "batches_per_epoch": steps})
    _, _, tokens, seconds = trainer.train_epoch()
    return tokens / seconds


def bench_trainer(corpus: Any, rounds: int, steps: int) -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).parent))
    from baseline import run_baseline

    config = TrainConfig(**SMALL, optimizer="adamw", epochs=1, device="cpu")
    bare, ours, ceilings, shape_rates = [], [], [], []
    for _ in range(rounds):  # interleaved, so all of them see the same machine noise
        bare.append(run_baseline(torch.tensor(corpus.train), corpus.vocab_size, steps=steps, **SMALL))
        ours.append(trainer_tokens_per_sec(config, corpus, steps))
        ceilings.append(matmul_ceiling())
        shape_rates.append(model_matmul_rate(config, corpus.vocab_size))
    ceiling, size = max(ceilings)
    shape_rate = max(shape_rates)
    fpt = flops_per_token(config, corpus.vocab_size)
    b, o = max(bare), max(ours)
    return {
        "shape": SMALL,
        "steps_per_round": steps,
        "rounds": rounds,
        "bare_tokens_per_sec": b,
        "artune_tokens_per_sec": o,
        "ratio": o / b,
        "ratio_median_of_rounds": statistics.median(x / y for x, y in zip(ours, bare)),
        "bare_tokens_per_sec_rounds": bare,
        "artune_tokens_per_sec_rounds": ours,
        "flops_per_token": fpt,
        "matmul_fp32_gflops": ceiling / 1e9,
        "matmul_ceiling_size": size,
        "artune_mfu": o * fpt / ceiling,
        "bare_mfu": b * fpt / ceiling,
        # the same, against what this shape's own weight matmuls reach (attention not counted)
        "model_matmul_gflops": shape_rate / 1e9,
        "artune_share_of_model_matmul_rate": o
        * (fpt - 12 * config.n_layers * config.d_model * config.seq_len)
        / shape_rate,
        "step_ms": 1000 * SMALL["batch_size"] * SMALL["seq_len"] / o,
    }


def attention_dtypes() -> tuple[torch.dtype, ...]:
    """float32, and bf16 where the CPU multiplies it natively (elsewhere oneDNN's bf16 path is far too slow to time)."""
    from artune.compat import cpu_has_native_bf16

    return (torch.float32, torch.bfloat16) if cpu_has_native_bf16() else (torch.float32,)


def bench_attention(rounds: int, threads: int) -> list[dict[str, Any]]:
    from artune.models import explicit_causal_attention

    def seconds(attend: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grad: torch.Tensor) -> float:
        n = max(10, int(1.5e8 / q.numel() / q.shape[-2]))
        for _ in range(3):
            attend(q, k, v).backward(grad)
        start = time.perf_counter()
        for _ in range(n):
            attend(q, k, v).backward(grad)
        return (time.perf_counter() - start) / n

    def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    rows = []
    for dtype, (B, H, T, D) in itertools.product(attention_dtypes(), ATTENTION_SHAPES):
        qkv = torch.randn(B, T, 3, H, D, dtype=dtype).permute(2, 0, 3, 1, 4)  # strided as the model's
        q, k, v = (t.clone().requires_grad_() for t in qkv.unbind(0))
        grad = torch.randn(B, H, T, D, dtype=dtype)
        for n_threads in sorted({1, threads}):
            torch.set_num_threads(n_threads)
            fused, explicit = [], []
            for _ in range(rounds):  # interleaved
                fused.append(seconds(sdpa, q, k, v, grad))
                explicit.append(seconds(explicit_causal_attention, q, k, v, grad))
            rows.append(
                {
                    "dtype": str(dtype).removeprefix("torch."),
                    "shape": [B, H, T, D],
                    "threads": n_threads,
                    "sdpa_ms": 1000 * min(fused),
                    "explicit_ms": 1000 * min(explicit),
                    "ratio": min(fused) / min(explicit),
                }
            )
    torch.set_num_threads(threads)
    return rows


# The default search's trial: its fixed shape knobs, read from search_spaces/default.yaml, at d_model 128
DEFAULT_TRIAL_KNOBS = (
    "seq_len",
    "batch_size",
    "n_layers",
    "n_heads",
    "position_encoding",
    "activation",
    "weight_decay",
)


def default_trial() -> dict[str, Any]:
    from artune.spaces import load_space

    fixed = load_space(str(REPO / "search_spaces" / "default.yaml")).fixed
    return {"d_model": 128, **{knob: fixed[knob] for knob in DEFAULT_TRIAL_KNOBS}}


def bench_attention_in_trainer(corpus: Any, rounds: int, threads: int, steps: int = 60) -> list[dict[str, Any]]:
    """A Trainer's step with SDPA everywhere against the same Trainer with explicit attention, alternating."""
    import artune.models

    explicit_max = artune.models.EXPLICIT_ATTENTION_MAX_LEN
    rows = []
    shapes = (("small", SMALL), ("default_trial", default_trial()))
    precisions = [PRECISION_NAMES[dtype] for dtype in attention_dtypes()]
    for precision, (name, shape) in itertools.product(precisions, shapes):
        for n_threads in sorted({1, threads}):
            torch.set_num_threads(n_threads)
            config = TrainConfig(
                **shape, optimizer="adamw", epochs=1, device="cpu", batches_per_epoch=3, precision=precision
            )
            trainer = Trainer(config, corpus)
            trainer.train_epoch()  # warm-up
            trainer.config = TrainConfig(**{**config.to_dict(), "batches_per_epoch": steps})
            ms: dict[str, list[float]] = {"sdpa": [], "explicit": []}
            try:
                for _ in range(rounds):
                    for form, longest in (("sdpa", {}), ("explicit", explicit_max)):
                        artune.models.EXPLICIT_ATTENTION_MAX_LEN = longest  # read at each call
                        ms[form].append(1000 * trainer.train_epoch()[3] / steps)
            finally:
                artune.models.EXPLICIT_ATTENTION_MAX_LEN = explicit_max
            sdpa, explicit = statistics.median(ms["sdpa"]), statistics.median(ms["explicit"])
            rows.append(
                {
                    "precision": precision,
                    "shape": name,
                    "threads": n_threads,
                    "sdpa_step_ms": sdpa,
                    "explicit_step_ms": explicit,
                    "speedup": sdpa / explicit,
                    "rounds": ms,
                }
            )
    torch.set_num_threads(threads)
    return rows


def _first_step_seconds(config: TrainConfig, corpus: Any) -> tuple[float, Trainer]:
    """A new Trainer's construction and first training step (with ``compile``: the compilation)."""
    start = time.perf_counter()
    trainer = Trainer(TrainConfig(**{**config.to_dict(), "batches_per_epoch": 1}), corpus)
    trainer.train_epoch()
    seconds = time.perf_counter() - start
    trainer.config = config
    return seconds, trainer


_FIRST_STEP_IN_NEW_PROCESS = """
import json, os, sys, torch
torch.set_num_threads(int(sys.argv[2]))
from artune.config import TrainConfig
from artune.data import load_corpus
from bench.run import _first_step_seconds
corpus = load_corpus("tiny_shakespeare", "character", os.environ.get("ARTUNE_DATA_DIR"))
print(json.dumps(_first_step_seconds(TrainConfig(**json.loads(sys.argv[1])), corpus)[0]))
"""


def bench_compile(corpus: Any, rounds: int, steps: int, knobs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Eager against ``compile: true`` at the small shape (with ``knobs`` changed), and what the compilation costs a
    trial.

    A new trial's first step (which holds the compilation, and the import of ``torch._dynamo``, which
    only compiling needs) is timed three ways: with an empty
    inductor cache (the machine's first compile of this shape); in a new process with the cache
    the first one filled (a new worker); and in the same process (the next trial of a reused
    worker). The break-even is the training time after which compiled steps have won back the
    extra first-step time.
    """
    import subprocess
    import tempfile

    config = TrainConfig(
        **{**SMALL, "optimizer": "adamw", "epochs": 1, "device": "cpu", **(knobs or {}), "batches_per_epoch": steps}
    )
    compiled_config = TrainConfig(**{**config.to_dict(), "compile": True})
    previous = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="artune-inductor-") as cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        try:
            eager_first, eager = _first_step_seconds(config, corpus)
            cold, _ = _first_step_seconds(compiled_config, corpus)
            same_process, compiled = _first_step_seconds(compiled_config, corpus)
            new_process = float(
                subprocess.run(
                    [
                        sys.executable,
                        "-c",
                        _FIRST_STEP_IN_NEW_PROCESS,
                        json.dumps(compiled_config.to_dict()),
                        str(torch.get_num_threads()),
                    ],
                    cwd=REPO,
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout.split()[-1]
            )
            eager_rates, compiled_rates, ceilings = [], [], []
            for _ in range(rounds):  # interleaved
                for trainer, rates in ((eager, eager_rates), (compiled, compiled_rates)):
                    _, _, tokens, seconds = trainer.train_epoch()
                    rates.append(tokens / seconds)
                ceilings.append(matmul_ceiling())
        finally:
            if previous is None:
                os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = previous
    ceiling, size = max(ceilings)
    fpt = flops_per_token(config, corpus.vocab_size)
    e, c = max(eager_rates), max(compiled_rates)
    saved_per_second = 1 - e / c  # of eager training time, once compiled

    def break_even(first_step: float) -> float:
        return max(0.0, first_step - eager_first) / saved_per_second if saved_per_second > 0 else float("inf")

    return {
        "shape": SMALL,
        "knobs": knobs or {},
        "steps_per_round": steps,
        "rounds": rounds,
        "eager_tokens_per_sec": e,
        "compiled_tokens_per_sec": c,
        "ratio": c / e,
        "ratio_median_of_rounds": statistics.median(x / y for x, y in zip(compiled_rates, eager_rates)),
        "eager_tokens_per_sec_rounds": eager_rates,
        "compiled_tokens_per_sec_rounds": compiled_rates,
        "matmul_fp32_gflops": ceiling / 1e9,
        "matmul_ceiling_size": size,
        "eager_mfu": e * fpt / ceiling,
        "compiled_mfu": c * fpt / ceiling,
        "eager_first_step_s": eager_first,
        "compiled_first_step_s": {"empty_cache": cold, "new_process_cached": new_process, "same_process": same_process},
        "break_even_s": {
            "empty_cache": break_even(cold),
            "new_process_cached": break_even(new_process),
            "same_process": break_even(same_process),
        },
    }


def _epoch_seconds_per_batch(batches: Any) -> float:
    count, start = 0, time.perf_counter()
    for _ in batches:
        count += 1
    return (time.perf_counter() - start) / count


def bench_sampler(corpus: Any, rounds: int, step_ms: float | None) -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).parent))
    from origin_data import origin_loader

    batch_size, seq_len = 16, 512
    tokens = torch.tensor(corpus.train)
    generator = torch.Generator().manual_seed(0)
    results: dict[str, Any] = {"batch_size": batch_size, "seq_len": seq_len, "rounds": rounds}
    for replacement in (False, True):
        ours, origin = [], []
        for _ in range(rounds):  # one epoch each, alternating
            ours.append(_epoch_seconds_per_batch(shuffled_batches(tokens, batch_size, seq_len, generator, replacement)))
            origin.append(_epoch_seconds_per_batch(origin_loader(tokens, batch_size, seq_len, replacement)))
        results["with_replacement" if replacement else "without_replacement"] = {
            "artune_batch_ms": 1000 * min(ours),
            "origin_batch_ms": 1000 * min(origin),
            "ratio": min(origin) / min(ours),  # > 1: artune is faster
            "artune_batch_ms_rounds": [1000 * x for x in ours],
            "origin_batch_ms_rounds": [1000 * x for x in origin],
        }
    ms = results["without_replacement"]["artune_batch_ms"]
    results["artune_batch_ms"] = ms
    if step_ms:
        results["share_of_small_training_step"] = ms / step_ms
    return results


def cpu_bf16_support() -> dict[str, Any]:
    """What this CPU offers bf16: oneDNN's bf16 path needs AVX-512 (native: AVX512_BF16 or AMX)."""
    return {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkldnn_bf16_supported": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
    }


@torch.no_grad()
def _valid_loss(trainer: Trainer, n_batches: int) -> float:
    """Mean loss over the first ``n_batches`` sequential valid batches (a full pass takes minutes here)."""
    trainer.model.eval()
    c = trainer.config
    losses = []
    for i, (x, y) in enumerate(valid_batches(trainer.valid_tokens, "sequential", c.batch_size, c.seq_len, c.seed)):
        if i == n_batches:
            break
        with trainer._autocast():
            logits = trainer.model(x)
        losses.append(F.cross_entropy(logits.flatten(0, 1).float(), y.flatten()).item())
    return sum(losses) / len(losses)


def bench_precision(corpus: Any, batch_size: int, steps: int, valid_batches_n: int = 2) -> dict[str, Any]:
    trainers = {
        p: Trainer(
            TrainConfig(
                **ORIGIN, batch_size=batch_size, precision=p, epochs=1, batches_per_epoch=1, device="cpu", seed=0
            ),
            corpus,
        )
        for p in ("fp32", "bf16")
    }
    seconds: dict[str, list[float]] = {p: [] for p in trainers}
    for _ in range(steps):  # one step of each in turn; the best step leaves out one-time costs
        for p, trainer in trainers.items():
            _, _, _, s = trainer.train_epoch()  # an epoch of one batch; both draw the same batches
            seconds[p].append(s)
    fp32, bf16 = min(seconds["fp32"]), min(seconds["bf16"])
    loss = {p: _valid_loss(t, valid_batches_n) for p, t in trainers.items()}
    return {
        "shape": {**ORIGIN, "batch_size": batch_size},
        "timed_steps": steps,
        **cpu_bf16_support(),
        "fp32_step_s": fp32,
        "bf16_step_s": bf16,
        "fp32_step_s_all": seconds["fp32"],
        "bf16_step_s_all": seconds["bf16"],
        "bf16_speedup": fp32 / bf16,
        "fp32_step_s_at_batch_16_estimate": fp32 * 16 / batch_size,
        "valid_batches": valid_batches_n,
        "fp32_valid_loss": loss["fp32"],
        "bf16_valid_loss": loss["bf16"],
        "valid_loss_rel_diff": abs(loss["bf16"] - loss["fp32"]) / loss["fp32"],
    }


def bench_search(trials: int, concurrency: int) -> dict[str, Any]:
    from bench.search_overhead import measure

    return measure(trials=trials, concurrency=concurrency)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sections", nargs="*", default=SECTIONS, choices=SECTIONS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the trainer section")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per round of the trainer section")
    parser.add_argument("--sampler-rounds", type=int, default=7, help="epochs of each sampler in the sampler section")
    parser.add_argument("--precision-batch", type=int, default=1, help="batch size of the precision section")
    parser.add_argument("--precision-steps", type=int, default=2, help="timed steps of each precision")
    parser.add_argument(
        "--compile-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a knob of the compile section's model and batch, e.g. the default search's trial: --compile-set "
        "seq_len=256 --compile-set batch_size=4 --compile-set position_encoding=rope --compile-set activation=swiglu",
    )
    parser.add_argument("--json", default=str(Path(__file__).parent / "out" / "bench.json"))
    args = parser.parse_args(argv)
    try:  # TrainConfig.from_dict names an unknown key (with a did-you-mean), converts each value and checks the rules
        bare = [item for item in args.compile_set if "=" not in item]
        if bare:
            raise ConfigError(f"expected KEY=VALUE, but got {bare[0]!r}")
        sets = {key.strip(): value.strip() for key, _, value in (item.partition("=") for item in args.compile_set)}
        knobs = {key: getattr(TrainConfig.from_dict({**SMALL, **sets}), key) for key in sets}
    except ConfigError as exc:
        parser.error(f"--compile-set: {exc}")
    torch.set_num_threads(args.threads)
    corpus = load_corpus("tiny_shakespeare", "character", os.environ.get("ARTUNE_DATA_DIR"))
    report: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "threads": args.threads,
            "torch": torch.__version__,
            **cpu_bf16_support(),
        },
    }
    if "trainer" in args.sections:
        r = report["trainer"] = bench_trainer(corpus, args.rounds, args.steps)
        print(
            f"trainer    bare loop {r['bare_tokens_per_sec']:,.0f} tok/s  "
            f"artune {r['artune_tokens_per_sec']:,.0f} tok/s  "
            f"ratio {r['ratio']:.2f}x  MFU {r['artune_mfu']:.0%} (bare {r['bare_mfu']:.0%}) of "
            f"{r['matmul_fp32_gflops']:.0f} GFLOP/s fp32 ({r['matmul_ceiling_size']}^2 matmul)"
        )
        print(
            f"trainer    the model's own weight matmuls alone reach {r['model_matmul_gflops']:.0f} GFLOP/s; "
            "artune's step "
            f"runs them at {r['artune_share_of_model_matmul_rate']:.0%} of that"
        )
    if "attention" in args.sections:
        report["attention"] = bench_attention(min(args.rounds, 3), args.threads)
        for row in report["attention"]:
            B, H, T, D = row["shape"]
            print(
                f"attention  {row['dtype']} B {B} H {H} T {T} head {D}, {row['threads']} thread(s): "
                f"sdpa {row['sdpa_ms']:.2f} ms  "
                f"explicit {row['explicit_ms']:.2f} ms  explicit {row['ratio']:.2f}x as fast"
            )
        report["attention_in_trainer"] = bench_attention_in_trainer(corpus, args.rounds, args.threads)
        for row in report["attention_in_trainer"]:
            print(
                f"attention  the Trainer, {row['precision']}, {row['shape']} shape, {row['threads']} thread(s): "
                "a step with sdpa "
                f"{row['sdpa_step_ms']:.1f} ms, explicit {row['explicit_step_ms']:.1f} ms (medians): "
                f"{row['speedup']:.3f}x"
            )
    if "compile" in args.sections:
        r = report["compile"] = bench_compile(corpus, args.rounds, args.steps, knobs)
        print(
            f"compile    small shape{''.join(f', {k} {v}' for k, v in knobs.items())}: "
            f"eager {r['eager_tokens_per_sec']:,.0f} tok/s  compiled {r['compiled_tokens_per_sec']:,.0f} tok/s  "
            f"ratio {r['ratio']:.2f}x (median of rounds {r['ratio_median_of_rounds']:.2f}x)  "
            f"MFU {r['eager_mfu']:.0%} -> {r['compiled_mfu']:.0%}"
        )
        first, even = r["compiled_first_step_s"], r["break_even_s"]
        print(
            f"compile    a new trial's first step: eager {r['eager_first_step_s']:.1f} s; "
            f"compiled {first['empty_cache']:.1f} s "
            f"(empty inductor cache), {first['new_process_cached']:.1f} s (new worker, cache filled), "
            f"{first['same_process']:.1f} s (reused worker)"
        )
        print(
            f"compile    it pays back after {even['empty_cache']:.0f} s / {even['new_process_cached']:.0f} s / "
            f"{even['same_process']:.0f} s of training"
        )
    if "sampler" in args.sections:
        step_ms = report.get("trainer", {}).get("step_ms")
        r = report["sampler"] = bench_sampler(corpus, args.sampler_rounds, step_ms)
        for key in ("without_replacement", "with_replacement"):
            s = r[key]
            print(
                f"sampler    {key:<20} artune {s['artune_batch_ms']:.3f} ms/batch  "
                f"origin {s['origin_batch_ms']:.3f} ms/batch  "
                f"artune {s['ratio']:.1f}x faster"
            )
        share = r.get("share_of_small_training_step")
        print(
            f"sampler    one batch {r['artune_batch_ms']:.3f} ms"
            + (f" = {share:.2%} of a small-shape training step" if share else "")
        )
    if "precision" in args.sections:
        r = report["precision"] = bench_precision(corpus, args.precision_batch, args.precision_steps)
        print(
            f"precision  origin shape, batch {args.precision_batch}: fp32 {r['fp32_step_s']:.2f} s/step  "
            f"bf16 autocast {r['bf16_step_s']:.2f} s/step  bf16 speedup {r['bf16_speedup']:.2f}x  "
            f"(cpu {r['cpu_capability']}, oneDNN bf16 {r['mkldnn_bf16_supported']})"
        )
        print(
            f"precision  valid loss after {args.precision_steps} steps: fp32 {r['fp32_valid_loss']:.4f}  "
            f"bf16 {r['bf16_valid_loss']:.4f}  rel diff {r['valid_loss_rel_diff']:.2%}"
        )
    if "search" in args.sections:
        r = report["search"] = bench_search(trials=8, concurrency=2)
        print(
            f"search     {r['trials']} trials x 3 epochs of {r['mean_epoch_s']:.1f} s "
            f"({r['batches_per_epoch']} batches), "
            f"{r['concurrency']} at a time: wall {r['wall_s']:.1f} s, ideal {r['ideal_s']:.1f} s "
            f"(sum of trial training time / concurrency), overhead {r['ratio']:.2f}x; "
            f"Tuner.fit alone {r['tuning_s']:.1f} s, {r['tuning_ratio']:.2f}x"
        )
        phases = ", ".join(f"{k.removesuffix('_s')} {v:.1f}" for k, v in r["startup_phases_s"].items())
        print(
            f"search     before Tuner.fit {r['startup_s']:.1f} s ({phases}); after it {r['end_s']:.1f} s; "
            "a trial's set-up "
            f"before its first epoch: {r['trial_setup_new_worker_s']:.1f} s in a new worker, "
            f"{r['trial_setup_reused_worker_s']:.1f} s in a reused one"
        )
    if "ddp" in args.sections:
        from bench.data_parallel import format_line, measure

        r = report["ddp"] = measure()
        print(format_line(r))
    write_report(report, Path(args.json))
    return 0


def write_report(report: dict[str, Any], path: Path) -> None:
    """The figures as JSON (every round kept), for later comparison."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")
