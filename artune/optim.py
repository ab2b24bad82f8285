"""The optimizer stage: Adam and AdamW as one fused kernel step (per device and dtype), and the lr schedule.

``Adam`` runs the same fused kernels ``torch.optim.Adam(fused=True)`` and ``torch.optim.AdamW(fused=True)``
run (``torch._fused_adam_``, ``torch._fused_adamw_``), on CPU as on CUDA, and gives the same
parameters step for step (a test holds it to that). It exists because ``torch.optim`` imports
``torch._dynamo`` the first time any optimizer is built, whether or not anything is compiled: 1.9-2.6 s
of CPU in every new process, which in a search is every new trial worker, on the two cores the first
trials need. This class imports nothing beyond torch.

The schedule is applied by the optimizer itself: the lr of step ``k`` (0-based) is ``lr * schedule(k)``.
Its state (moments and step counts, laid out as ``torch.optim``'s ``state_dict``, and the number of
steps taken) is what a checkpoint holds; the hyperparameters come from the run's config, never from
the checkpoint.
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
    """Adam (L2 weight decay, as in the origin) or AdamW (decoupled weight decay), fused, scheduled."""

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
        # Every parameter, frozen ones too, so that indices match torch.optim's state_dict; a
        # parameter without a gradient in a step (a frozen one, or one the step did not reach) is not stepped.
        self.params = list(params)
        self.base_lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.kernel = torch._fused_adamw_ if decoupled_weight_decay else torch._fused_adam_
        self.schedule = schedule
        self.steps_taken = 0
        self.exp_avgs = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.exp_avg_sqs = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        # Per parameter, as torch.optim keeps them.
        self.state_steps = [torch.zeros((), dtype=torch.float32, device=p.device) for p in self.params]
        # The fused kernels take one device and dtype per call.
        by_device_dtype: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        for i, p in enumerate(self.params):
            by_device_dtype.setdefault((p.device, p.dtype), []).append(i)
        self.by_device_dtype = list(by_device_dtype.values())

    @property
    def lr(self) -> float:
        """The lr of the next step."""
        return self.base_lr * self.schedule(self.steps_taken)

    @property
    def last_lr(self) -> float:
        """The lr of the last step taken (of the first step, before any)."""
        return self.base_lr * self.schedule(max(self.steps_taken - 1, 0))

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        beta1, beta2 = self.betas
        for indices in self.by_device_dtype:
            live = [i for i in indices if self.params[i].grad is not None]
            if not live:
                continue
            steps = [self.state_steps[i] for i in live]
            torch._foreach_add_(steps, 1)
            self.kernel(
                [self.params[i] for i in live], [self.params[i].grad for i in live],
                [self.exp_avgs[i] for i in live], [self.exp_avg_sqs[i] for i in live], [], steps,
                amsgrad=False, lr=self.lr, beta1=beta1, beta2=beta2, weight_decay=self.weight_decay,
                eps=self.eps, maximize=False, grad_scale=None, found_inf=None,
            )
        self.steps_taken += 1

    # --- checkpoints

    def state_dict(self) -> dict[str, Any]:
        """``torch.optim``'s layout (``state`` by parameter index, one param group) plus ``steps_taken``."""
        state = {
            i: {"step": step, "exp_avg": m, "exp_avg_sq": v}
            for i, (step, m, v) in enumerate(zip(self.state_steps, self.exp_avgs, self.exp_avg_sqs))
        }
        group = {"lr": self.lr, "initial_lr": self.base_lr, "betas": self.betas, "eps": self.eps,
                 "weight_decay": self.weight_decay, "params": list(range(len(self.params)))}
        return {"state": state, "param_groups": [group], "steps_taken": self.steps_taken}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Put back the moments, step counts and steps taken of ``state_dict``. The layout is
        ``torch.optim``'s, so a ``torch.optim.Adam``/``AdamW`` state with ``steps_taken`` added loads too."""
        (group,) = state_dict["param_groups"]
        if len(group["params"]) != len(self.params):
            raise ValueError(f"the optimizer state holds {len(group['params'])} parameters, the model has {len(self.params)}")
        for i, p in enumerate(self.params):
            saved = state_dict["state"].get(group["params"][i])
            if saved is None:  # never stepped (torch.optim keeps no state for it)
                self.state_steps[i].zero_()
                self.exp_avgs[i].zero_()
                self.exp_avg_sqs[i].zero_()
                continue
            if saved["exp_avg"].shape != p.shape:
                raise ValueError(f"the optimizer state of parameter {i} has shape {tuple(saved['exp_avg'].shape)}, "
                                 f"the model's is {tuple(p.shape)}")
            self.state_steps[i].copy_(saved["step"])
            self.exp_avgs[i].copy_(saved["exp_avg"])
            self.exp_avg_sqs[i].copy_(saved["exp_avg_sq"])
        self.steps_taken = int(state_dict["steps_taken"])


def make_optimizer(config: TrainConfig, params: Iterable[torch.nn.Parameter], total_steps: int) -> Adam:
    """The run's optimizer, its lr following ``lr_lambda`` over ``total_steps`` planned steps.

    Fused: one kernel updates every parameter, on CPU as on CUDA. On CPU torch's foreach
    implementation loops over the parameters, op by op, with a host-side bias correction each; fused
    is 1.04-1.06x faster per small-shape training step (bench trainer).
    """
    schedule = lr_lambda(config, total_steps)
    beta2 = config.adam_beta2 if config.adam_beta2 is not None else 0.98 if config.optimizer == "noam" else 0.999
    betas = (0.9, beta2)
    if config.optimizer == "adamw":
        return Adam(params, lr=config.lr, betas=betas, weight_decay=config.weight_decay, decoupled_weight_decay=True, schedule=schedule)
    # 'adam' as in the origin, and 'noam' (Adam with the Noam schedule)
    return Adam(params, lr=config.lr, betas=betas, weight_decay=config.weight_decay, schedule=schedule)
