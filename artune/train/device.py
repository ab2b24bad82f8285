"""Where a trial trains and at what precision: the device, and the autocast dtype measured to pay on it."""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Optional

import torch

from artune.compat import cpu_has_native_bf16
from artune.config import ConfigError
from artune.errors import ModelTooLarge
from artune.models import ModelConfig

# What a resolved precision is called in an epoch's metrics (the precision knob's own names)
PRECISION_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16"}
PRECISIONS = {name: dtype for dtype, name in PRECISION_NAMES.items()}
# bf16 autocast also casts activations and keeps fp32 master weights: its matmuls must be clearly
# faster than fp32's to make the whole step faster.
BF16_MIN_SPEEDUP = 1.3


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device 'cuda' needs a CUDA device, but torch {torch.version.__version__} sees none; "
            "use device 'auto' or 'cpu'"
        )
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def fitting(model: ModelConfig, optimizer: str, device: torch.device) -> ModelConfig:
    """``model``, where training it fits the memory of ``device``: checked before any of it is allocated, since a
    model built layer by layer past the memory met the kernel's OOM killer, not an error (see docs/usage.md)."""
    memory = device_memory(device)
    need = training_bytes(model, optimizer)
    if memory is not None and need > memory[0]:
        m = model
        raise ModelTooLarge(
            f"the model (d_model={m.d_model}, n_layers={m.n_layers}, d_ff={m.d_ff}, vocab_size={m.vocab_size}, "
            f"seq_len={m.seq_len}) has {m.num_parameters():,} parameters: {need / 2**30:,.1f} GiB to train with "
            f"{optimizer} (weights, gradients, its state), more than the {memory[0] / 2**30:,.1f} GiB {memory[1]}; "
            "a smaller d_model, d_ff or n_layers may fit"
        )
    return model


def training_bytes(model: ModelConfig, optimizer: str) -> int:
    """The bytes a model's training holds whatever the batch: fp32 weights and gradients, the optimizer's moments
    (two per weight; muon keeps one for the blocks' matrices, AdamW's two for the rest) and RoPE's tables."""
    d, up = model.d_model, (2 if model.activation == "swiglu" else 1) * model.d_ff
    matrices = model.n_layers * (4 * d * d + up * d + model.d_ff * d)  # muon's: artune.optim.muon_matrices
    one_moment = matrices if optimizer == "muon" else 0
    tables = 6 * model.seq_len * (d // model.n_heads) * model.n_layers if model.position_encoding == "rope" else 0
    return 4 * (4 * model.num_parameters() - one_moment + tables)


def device_memory(device: torch.device) -> Optional[tuple[int, str]]:
    """The bytes of memory a process may use on ``device`` and what they are: a GPU's, or the machine's RAM or its
    cgroup's limit where that is less (a container's, a batch job's); None where it is not known."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory, f"of {device}"
    if device.type != "cpu":
        return None
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return None
    limit = cgroup_memory_limit()
    if limit is not None and limit < total:
        return limit, "its cgroup allows"
    return (total, "of this machine") if total > 0 else None


def cgroup_memory_limit(own: Path = Path("/proc/self/cgroup"), root: Path = Path("/sys/fs/cgroup")) -> Optional[int]:
    """The least memory limit of this process's cgroup and the cgroups above it (v2's ``memory.max``, v1's
    ``memory.limit_in_bytes``); None where none is set or none can be read."""
    try:
        lines = own.read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            base, name = root, "memory.max"  # "max" where unlimited
        elif "memory" in controllers.split(","):
            base, name = root / "memory", "memory.limit_in_bytes"
        else:
            continue
        here = base / path.strip("/")
        for directory in (here, *here.parents):
            if not directory.is_relative_to(base):
                break
            try:
                value = (directory / name).read_text().strip()
            except OSError:
                continue  # not there (a namespace's view starts at its own cgroup), or not readable
            if value.isdigit():
                limits.append(int(value))
    return min(limits) if limits else None


def resolve_precision(name: str, device: torch.device, d_model: int = 512) -> torch.dtype:
    """The autocast dtype; fp32 means no autocast.

    'auto' picks bf16 on CUDA GPUs that support it, and on a CPU only where it helps: the CPU must
    multiply bf16 natively (without it oneDNN's bf16 path is far slower than fp32; see docs/benchmarks.md,
    'Precision') and a bf16 matmul of the model's width must beat fp32 in a quick side-by-side probe
    (:func:`cpu_bf16_speedup`).
    """
    if name == "bf16":
        if device.type == "cuda" and not _cuda_bf16(device):
            raise ConfigError(
                f"precision 'bf16' needs a GPU that computes in bf16, but {torch.cuda.get_device_name(device)} "
                "does not; use precision 'auto' or 'fp32'"
            )
        return torch.bfloat16
    if name != "auto":
        return torch.float32
    if device.type == "cuda":  # bf16 where the GPU computes in it (Ampere on); a V100's or T4's emulation is slower
        return torch.bfloat16 if _cuda_bf16(device, including_emulation=False) else torch.float32
    if device.type == "cpu" and cpu_has_native_bf16() and cpu_bf16_speedup(d_model) >= BF16_MIN_SPEEDUP:
        return torch.bfloat16
    return torch.float32


def resumed_precision(saved: object, name: str, device: torch.device, resolved: torch.dtype) -> torch.dtype:
    """A resumed run's autocast dtype: under precision 'auto', the one its checkpoint trained in (``saved``), as the
    run would have gone on; another process's probe may choose otherwise. Not bf16 where this device lacks fast bf16
    (a resume on other hardware, whose bits differ anyway): there, and without ``saved``, ``resolved`` stands."""
    dtype = PRECISIONS.get(saved) if isinstance(saved, str) else None
    if name != "auto" or dtype is None:
        return resolved
    if dtype == torch.bfloat16 and not (
        _cuda_bf16(device, including_emulation=False) if device.type == "cuda" else cpu_has_native_bf16()
    ):
        return resolved
    return dtype


def _cuda_bf16(device: torch.device, including_emulation: bool = True) -> bool:
    """Whether autocast takes bf16 on this GPU (the check autocast itself makes, on this device); with
    ``including_emulation=False``, whether the GPU computes in bf16 natively."""
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported(including_emulation=including_emulation)


def matmul_rate(m: int, k: int, n: int, dtype: torch.dtype = torch.float32, seconds: float = 0.2) -> float:
    """Measured FLOP/s of an ``(m, k) @ (k, n)`` matmul on this process's CPU threads."""
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    for _ in range(2):
        a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * m * k * n * count / (time.perf_counter() - start)


@functools.lru_cache(maxsize=None)
def cpu_bf16_speedup(d_model: int, tokens: int = 1024, seconds: float = 0.05) -> float:
    """bf16 matmul throughput over fp32 on one CPU thread, for a ``(tokens, d) x (d, 4d)`` product.

    Measured once per width and process: three interleaved rounds of ``seconds`` per dtype, the best of each. On one
    thread whatever the process's count: the ratio is the core's own, and on several threads other processes' load
    splits the probe's matmuls unevenly, so that auto chose at random (docs/experiments.md, 'the bf16 probe').
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        best = {torch.float32: 0.0, torch.bfloat16: 0.0}
        for _ in range(3):
            for dtype in best:
                best[dtype] = max(best[dtype], matmul_rate(tokens, d_model, 4 * d_model, dtype, seconds))
    finally:
        torch.set_num_threads(threads)
    return best[torch.bfloat16] / best[torch.float32]
