"""torch.compile for the training step: once per model shape and process, and compile: 'auto''s choice of when.

The state here is the process's, not a Trainer's: a Ray worker trains trial after trial, and what it
compiled (or failed to) for one trial holds for the next.
"""

from __future__ import annotations

import math
import sys
from typing import Callable, Optional

import torch

# compile: 'auto' rents before it buys: compiling costs a fixed time up front and saves a share of every
# step, and ASHA may stop a trial at any rung. So it trains eagerly for as long as compiling takes to pay
# back, then compiles if as long again is left of its plan: a trial pays at most twice what it had to.
# The pay-back times per device are measured (docs/benchmarks.md, 'Compile'; docs/experiments.md, 'compile: auto').
AUTO_COMPILE_AFTER_S = {"cpu": 180.0, "cuda": 30.0}

# ...and keeps it only where its steps then train this much faster than the eager ones did: a smaller gain is
# within the pace's spread between epochs on a shared machine, too little to tell from none.
AUTO_COMPILE_MIN_SPEEDUP = 1.05
# ...and leaves bf16 autocast on a CPU eager: with a search's two one-thread trials at once its compiled steps
# were no faster than eager, and the compilation was lost (docs/experiments.md, 'bf16 on a CPU that multiplies
# it natively').
AUTO_COMPILE_EAGER = {("cpu", torch.bfloat16)}
# An epoch's first steps are left out of its pace: the compiled model's first call compiles it, and the next
# may still warm up (CUDA graphs record on it), so both epochs are timed from the same step on.
PACE_SKIPS_STEPS = 2

_compiled_shape: Optional[tuple] = None  # what the last compiled Trainer of this process compiled
# why torch.compile failed in this process, under compile: auto (which then stops trying)
_compile_failed: Optional[str] = None
# the shapes whose compiled steps this process measured no faster than eager: compile: auto leaves them eager
_slower_compiled: dict[tuple, str] = {}


def compile_model(model: torch.nn.Module, mode: str, shape: tuple) -> Callable:
    """``model`` through torch.compile, for ``shape``: its config, batch, window, mode, device and dtype."""
    _compile_afresh_for_a_new_shape(shape)
    return torch.compile(model, mode=mode)


def _compile_afresh_for_a_new_shape(shape: tuple) -> None:
    """Clear torch.compile's caches when this process compiles a different model shape than before.

    Dynamo keeps one compiled entry per shape of the model's ``forward`` and, past its recompile
    limit (8), silently runs it eagerly: a Ray worker reused across a search over ``d_model`` would
    train its 9th shape uncompiled. Same-shaped trials (the usual reuse) keep the compiled code;
    a new shape compiles anew (from the inductor cache on disk where it holds the shape).
    """
    global _compiled_shape
    if _compiled_shape is not None and shape != _compiled_shape:
        torch.compiler.reset()
    _compiled_shape = shape


def auto_compile_pays(
    shape: tuple,
    device_type: str,
    autocast_dtype: torch.dtype,
    *,
    missing_compiler: Optional[str],
    epoch: int,
    planned_epochs: int,
    epoch_seconds: Optional[float],
) -> bool:
    """compile: auto's choice before an epoch (see ``AUTO_COMPILE_AFTER_S``): whether to compile now."""
    if (
        missing_compiler
        or _compile_failed
        or shape in _slower_compiled
        or device_type not in AUTO_COMPILE_AFTER_S
        or (device_type, autocast_dtype) in AUTO_COMPILE_EAGER
    ):
        return False
    if _compiled_shape == shape:
        return True  # this process compiled the same shape: torch.compile's cache holds it, nothing to pay
    if epoch_seconds is None:
        return False
    after = AUTO_COMPILE_AFTER_S[device_type]
    trained = epoch * epoch_seconds  # at the last epoch's pace, so a resumed trial counts its past epochs
    left = (planned_epochs - epoch) * epoch_seconds
    return trained >= after and left >= after


def note_compile_failed(exc: Exception, epoch: int) -> None:
    """Say once why torch.compile failed in ``epoch``; compile: auto does not try again in this process."""
    global _compile_failed
    _compile_failed = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"
    print(
        f"warning: compile: auto: torch.compile failed in epoch {epoch} ({_compile_failed}); "
        "this process trains eagerly from here",
        file=sys.stderr,
        flush=True,
    )


def compiled_pays_off(eager_rate: Optional[float], compiled_rate: Optional[float]) -> Optional[bool]:
    """compile: auto's check after compiling: whether the compiled steps' tokens/s beat the eager steps' before
    by ``AUTO_COMPILE_MIN_SPEEDUP``; None where either was not measured (an epoch too short to time, say)."""
    if not (eager_rate and compiled_rate and math.isfinite(eager_rate) and math.isfinite(compiled_rate)):
        return None
    return compiled_rate >= AUTO_COMPILE_MIN_SPEEDUP * eager_rate


def note_compile_did_not_pay(shape: tuple, epoch: int, eager_rate: float, compiled_rate: float) -> None:
    """Say, in one line with the figures, that compiling did not pay; this process leaves ``shape`` eager."""
    _slower_compiled[shape] = f"{compiled_rate:,.0f} tokens/s compiled against {eager_rate:,.0f} eager"
    print(
        f"warning: compile: auto: compiled, epoch {epoch} trained {compiled_rate:,.0f} tokens/s, "
        f"{compiled_rate / eager_rate:.2f}x the {eager_rate:,.0f} eager before it (under the "
        f"{AUTO_COMPILE_MIN_SPEEDUP:.2f}x that pays); training eagerly from here",
        file=sys.stderr,
        flush=True,
    )
