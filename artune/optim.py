"""The optimizer stage: torch.optim's fused Adam or AdamW, or Muon with AdamW, and the lr schedule they follow.

The schedule is applied by the optimizer itself: the lr of step ``k`` (0-based) is ``lr * schedule(k)``,
so that a deadline can plan it again mid-run. A checkpoint holds ``torch.optim``'s ``state_dict`` (one per
torch optimizer) and the number of steps taken; the hyperparameters come from the run's config, never from
the checkpoint.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch
from torch import nn

from artune.config import TrainConfig, beta2_of

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
        if "param_groups" not in state_dict:
            raise ValueError("the optimizer state is not Adam's (it holds no 'param_groups')")
        check_state(state_dict, self.optimizer, "exp_avg")
        load_keeping_hyperparameters(self.optimizer, state_dict)
        self.steps_taken = int(state_dict["steps_taken"])


def check_state(state_dict: dict[str, Any], optimizer: torch.optim.Optimizer, moment: str) -> None:
    """Refuse, naming what differs, a ``torch.optim`` state saved for other parameters than ``optimizer``'s
    (its one parameter group): their number, or a parameter's shape (of its ``moment`` buffer)."""
    (group,) = state_dict["param_groups"]
    (current,) = optimizer.param_groups
    params = current["params"]
    if len(group["params"]) != len(params):
        raise ValueError(f"the optimizer state holds {len(group['params'])} parameters, the model has {len(params)}")
    for i, p in enumerate(params):
        saved = state_dict["state"].get(group["params"][i])
        if saved is not None and saved[moment].shape != p.shape:
            raise ValueError(
                f"the optimizer state of parameter {i} has shape {tuple(saved[moment].shape)}, "
                f"the model's is {tuple(p.shape)}"
            )


def load_keeping_hyperparameters(optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]) -> None:
    """Load ``state_dict``'s moments and step counts into ``optimizer``, keeping its own hyperparameters."""
    (group,) = state_dict["param_groups"]
    hyperparameters = {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}
    optimizer.load_state_dict(
        {"state": state_dict["state"], "param_groups": [{**hyperparameters, "params": group["params"]}]}
    )


class Muon(Adam):
    """torch.optim's Muon on the transformer blocks' weight matrices, and fused AdamW on every other parameter
    (the token embedding, which the output layer shares, the norms, the learned positions), both stepping at the
    lr its schedule gives each step, with the same decoupled weight decay.

    Muon's update is an orthogonalised momentum, scaled to the RMS an AdamW update has (torch's
    ``adjust_lr_fn="match_rms_adamw"``, from Moonshot's "Muon is Scalable for LLM Training"), so that the lr and
    weight decay tuned for AdamW carry over. Measured against AdamW: docs/experiments.md (Muon).
    """

    def __init__(
        self,
        matrices: Iterable[nn.Parameter],
        others: Iterable[nn.Parameter],
        *,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        schedule: Schedule = lambda step: 1.0,
    ) -> None:
        self.muon = torch.optim.Muon(matrices, lr=lr, weight_decay=weight_decay, adjust_lr_fn="match_rms_adamw")
        self.optimizer = torch.optim.AdamW(others, lr=lr, betas=betas, weight_decay=weight_decay, fused=True)
        self.base_lr = lr
        self.schedule = schedule
        self.steps_taken = 0

    def zero_grad(self) -> None:
        self.muon.zero_grad(set_to_none=True)
        self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        lr = self.lr
        for group in (*self.muon.param_groups, *self.optimizer.param_groups):
            group["lr"] = lr
        self.muon.step()
        self.optimizer.step()
        self.steps_taken += 1

    def state_dict(self) -> dict[str, Any]:
        """Each torch optimizer's ``state_dict`` (``muon``, ``adamw``) plus ``steps_taken``."""
        return {"muon": self.muon.state_dict(), "adamw": self.optimizer.state_dict(), "steps_taken": self.steps_taken}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "muon" not in state_dict:
            raise ValueError("the optimizer state is not Muon's (it holds no 'muon' part)")
        check_state(state_dict["muon"], self.muon, "momentum_buffer")
        check_state(state_dict["adamw"], self.optimizer, "exp_avg")
        load_keeping_hyperparameters(self.muon, state_dict["muon"])
        load_keeping_hyperparameters(self.optimizer, state_dict["adamw"])
        self.steps_taken = int(state_dict["steps_taken"])


def muon_matrices(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """The parameters Muon steps (the transformer blocks' 2-D weights) and the rest, each once, in model order."""
    matrices, others = [], []
    for name, p in model.named_parameters():  # a shared parameter (the tied output layer) comes once
        (matrices if name.startswith("blocks.") and p.ndim == 2 else others).append(p)
    return matrices, others


def make_optimizer(config: TrainConfig, model: nn.Module, total_steps: int) -> Adam:
    """The run's optimizer for ``model``'s parameters, its lr following ``lr_lambda`` over ``total_steps``."""
    schedule = lr_lambda(config, total_steps)
    beta2 = beta2_of(config.adam_beta2, config.optimizer)
    if config.optimizer == "muon":
        matrices, others = muon_matrices(model)
        return Muon(
            matrices, others, lr=config.lr, betas=(0.9, beta2), weight_decay=config.weight_decay, schedule=schedule
        )
    decoupled = config.optimizer == "adamw"  # 'adam' (L2, as in the origin) and 'noam' (Adam with the Noam schedule)
    return Adam(
        model.parameters(),
        lr=config.lr,
        betas=(0.9, beta2),
        weight_decay=config.weight_decay,
        decoupled_weight_decay=decoupled,
        schedule=schedule,
    )
