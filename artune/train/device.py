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
    """``model``, where training it fits the device's memory: its weights, their gradients and the optimizer's
    state, 4 bytes each (muon keeps one moment for most weights, the others two). A model too large failed only
    as it was built, its layers allocated one by one until the kernel's OOM killer ended the process (``n_layers``
    of 10**8), or at the first step's Adam state: ModelTooLarge (a MemoryError) here, before anything is allocated."""
    total = device_memory(device)
    need = model.num_parameters() * (12 if optimizer == "muon" else 16)
    if total is not None and need > total:
        raise ModelTooLarge(
            f"the model's {model.num_parameters():,} parameters need {need / 2**30:,.1f} GiB to train (their "
            f"gradients and the {optimizer} optimizer's state included), more than the {total / 2**30:,.1f} GiB "
            f"of {'this machine' if device.type == 'cpu' else device}"
        )
    return model


def device_memory(device: torch.device) -> Optional[int]:
    """The bytes of memory a process may use on ``device``: a GPU's, or the machine's RAM under its cgroup's limit
    (a container's); None where it is not known."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type != "cpu":
        return None
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()  # cgroup v2; "max" where there is none
    except OSError:
        return total
    return min(total, int(limit)) if limit.isdigit() else total


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
