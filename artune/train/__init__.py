"""The trainer: one configuration's epochs of training, validation and a greedy sample, without Ray.

``trainer`` is the loop, ``plan`` the lr schedule's plan in epochs and steps, ``device`` where and at what
precision it trains, ``compile`` when torch.compile pays, ``checkpoint`` the resumable file format,
``diagnostics`` the optional statistics, and ``cli`` is ``python -m artune.train``. ``artune.trainable``
wraps the Trainer for Ray Tune.

A process-wide setting (``compile.AUTO_COMPILE_AFTER_S``, say) is read from the module that owns it:
patch it there, not here.
"""

from artune.compat import cpu_has_native_bf16
from artune.errors import CheckpointError, DeadlineReached, DivergedError
from artune.train.checkpoint import CHECKPOINT_FILE, CHECKPOINT_FORMAT, RESUME_MUST_MATCH
from artune.train.cli import format_metrics, main
from artune.train.compile import AUTO_COMPILE_AFTER_S
from artune.train.device import BF16_MIN_SPEEDUP, cpu_bf16_speedup, matmul_rate, resolve_device, resolve_precision
from artune.train.plan import LENGTHEN_MARGIN, steps_per_epoch
from artune.train.trainer import DIVERGENCE_CHECK_EVERY, Metrics, Trainer, model_config

__all__ = [
    "AUTO_COMPILE_AFTER_S",
    "BF16_MIN_SPEEDUP",
    "CHECKPOINT_FILE",
    "CHECKPOINT_FORMAT",
    "DIVERGENCE_CHECK_EVERY",
    "LENGTHEN_MARGIN",
    "RESUME_MUST_MATCH",
    "CheckpointError",
    "DeadlineReached",
    "DivergedError",
    "Metrics",
    "Trainer",
    "cpu_bf16_speedup",
    "cpu_has_native_bf16",
    "format_metrics",
    "main",
    "matmul_rate",
    "model_config",
    "resolve_device",
    "resolve_precision",
    "steps_per_epoch",
]
