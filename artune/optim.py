"""The optimizer stage: torch.optim's fused Adam or AdamW, and the lr schedule it follows.

The schedule is applied by the optimizer itself: the lr of step ``k`` (0-based) is ``lr * schedule(k)``,
so that a deadline can plan it again mid-run. A checkpoint holds ``torch.optim``'s ``state_dict`` and
the number of steps taken; the hyperparameters come from the run's config, never from the checkpoint.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch

from artune.config import TrainConfig

Schedule = Callable[[int], float]


def lr_lambda(config: TrainConfig, total_steps: int) -> Schedule:
    """The multiplier of ``lr`` at optimizer step ``step`` (0-based) of a run of ``total_steps``.

    A linear warm-up over ``warmup`` steps, then ``lr_schedule``: constant, or a cosine or linear
    decay that reaches ``lr_min_ratio`` at the last planned step. Noam is its own schedule.
    """
    if config.optimizer == "noam":
        scale, warmup = config.d_model**-0.5, config.warmup

        def noam(step: int) -> float:
            step += 1
            return scale * min(step**-0.5, step * warmup**-1.5)

        return noam
    warmup, schedule, final = config.warmup, config.lr_schedule, config.lr_min_ratio
    decay_steps = max(1, total_steps - warmup - 1)

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / decay_steps)
        if schedule == "cosine":
            return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - (1.0 - final) * progress  # linear

    return multiplier


class Adam:
    """torch.optim's fused Adam (L2 weight decay, as in the origin) or AdamW (decoupled weight decay),
    stepping at the lr its schedule gives each step.

    Fused: one kernel per device and dtype updates every parameter, on CPU as on CUDA, where the default
    implementation loops over them op by op (see docs/benchmarks.md, 'The trainer against a bare loop').
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        *,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = False,
        schedule: Schedule = lambda step: 1.0,
    ) -> None:
        kind = torch.optim.AdamW if decoupled_weight_decay else torch.optim.Adam
        self.optimizer = kind(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=True)
        self.base_lr = lr
        self.schedule = schedule
        self.steps_taken = 0

    @property
    def betas(self) -> tuple[float, float]:
        return self.optimizer.param_groups[0]["betas"]

    @property
    def lr(self) -> float:
        """The lr of the next step."""
        return self.base_lr * self.schedule(self.steps_taken)

    @property
    def last_lr(self) -> float:
        """The lr of the last step taken (of the first step, before any)."""
        return self.base_lr * self.schedule(max(self.steps_taken - 1, 0))

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        self.optimizer.step()
        self.steps_taken += 1

    # --- checkpoints

    def state_dict(self) -> dict[str, Any]:
        """``torch.optim``'s ``state_dict`` plus ``steps_taken``."""
        return {**self.optimizer.state_dict(), "steps_taken": self.steps_taken}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Put back the moments, step counts and steps taken of ``state_dict``, keeping this optimizer's
        hyperparameters. A state saved by artune's earlier optimizer (the same ``state`` entries under one
        parameter group) loads too, as does a ``torch.optim.Adam``/``AdamW`` state with ``steps_taken`` added."""
        (group,) = state_dict["param_groups"]
        (current,) = self.optimizer.param_groups
        params = current["params"]
        if len(group["params"]) != len(params):
            raise ValueError(
                f"the optimizer state holds {len(group['params'])} parameters, the model has {len(params)}"
            )
        for i, p in enumerate(params):
            saved = state_dict["state"].get(group["params"][i])
            if saved is not None and saved["exp_avg"].shape != p.shape:
                raise ValueError(
                    f"the optimizer state of parameter {i} has shape {tuple(saved['exp_avg'].shape)}, "
                    f"the model's is {tuple(p.shape)}"
                )
        hyperparameters = {k: v for k, v in current.items() if k != "params"}
        self.optimizer.load_state_dict(
            {"state": state_dict["state"], "param_groups": [{**hyperparameters, "params": group["params"]}]}
        )
        self.steps_taken = int(state_dict["steps_taken"])


def make_optimizer(config: TrainConfig, params: Iterable[torch.nn.Parameter], total_steps: int) -> Adam:
    """The run's optimizer, its lr following ``lr_lambda`` over ``total_steps`` planned steps."""
    schedule = lr_lambda(config, total_steps)
    beta2 = config.adam_beta2 if config.adam_beta2 is not None else 0.98 if config.optimizer == "noam" else 0.999
    decoupled = config.optimizer == "adamw"  # 'adam' (L2, as in the origin) and 'noam' (Adam with the Noam schedule)
    return Adam(
        params,
        lr=config.lr,
        betas=(0.9, beta2),
        weight_decay=config.weight_decay,
        decoupled_weight_decay=decoupled,
        schedule=schedule,
    )
