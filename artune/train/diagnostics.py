"""Optional per-epoch statistics of parameters, gradients and activations (off by default: they cost time)."""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch


def param_grad_stats(model: torch.nn.Module, grad_norm: Optional[torch.Tensor], clip: float) -> dict[str, float]:
    """Each parameter's norm, and the epoch's last gradients before clipping: ``grad_norm/total``
    (what clipping compared with ``clip``) and each parameter's share of it."""
    stats: dict[str, float] = {}
    total = grad_norm.item() if grad_norm is not None else None
    # clip_grad_norm_'s own scale
    unclip = 1.0 if total is None else max(1.0, (total + 1e-6) / clip)
    if total is not None:
        stats["grad_norm/total"] = total
    for name, p in model.named_parameters():
        stats[f"param_norm/{name}"] = p.detach().norm().item()
        if p.grad is not None:
            stats[f"grad_norm/{name}"] = p.grad.detach().norm().item() * unclip
    return stats


def activation_hooks(model: torch.nn.Module, into: dict[str, torch.Tensor]) -> list:
    """Forward hooks that keep each block's output in ``into`` (emptied first); remove them when done."""
    into.clear()

    def keep(name: str) -> Callable:
        def hook(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
            into[name] = output.detach().float()

        return hook

    return [block.register_forward_hook(keep(f"blocks.{i}")) for i, block in enumerate(model.blocks)]


def activation_stats(activations: dict[str, torch.Tensor]) -> dict[str, float]:
    stats: dict[str, float] = {}
    for name, a in activations.items():
        stats[f"activation_mean/{name}"] = a.mean().item()
        stats[f"activation_std/{name}"] = a.std().item()
    return stats
