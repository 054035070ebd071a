"""AdamW with AIM's recipe and a per-step warmup + cosine schedule.

The parameter grouping and the schedule are timm's (`param_groups_weight_decay`, `CosineLRScheduler` with
`t_in_epochs=False`), re-written here for the one configuration the loop uses: importing timm costs ~2 s in
every training process (it pulls in torchvision and torch._dynamo). tests/core/test_timm_parity.py checks both
against timm at every step.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Any

import torch
from torch import nn

from pipelines.config import OptimSection, ScheduleSection

__all__ = ["scaled_lr", "param_groups", "build_optimizer", "WarmupCosine", "build_scheduler"]


def scaled_lr(optim: OptimSection) -> float:
    """The learning rate is given per 256 images and scaled linearly by the global batch."""
    return optim.lr * optim.batch_size / 256


def param_groups(model: nn.Module, weight_decay: float, skip: set[str]) -> list[dict[str, Any]]:
    """No decay on 1-d parameters, biases and names matching `skip` (fnmatch patterns); as timm's
    `param_groups_weight_decay`: the no-decay group first, empty groups left out, all no-decay at 0."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        excluded = p.ndim <= 1 or name.endswith(".bias") or any(fnmatch.fnmatch(name, s) for s in skip)
        (no_decay if excluded or not weight_decay else decay).append(p)
    groups = [{"params": no_decay, "weight_decay": 0.0}] if no_decay else []
    return groups + ([{"params": decay, "weight_decay": weight_decay}] if decay else [])


def build_optimizer(model: nn.Module, optim: OptimSection, fused: bool = False) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases, norms and positional embeddings (`model.no_weight_decay()`)."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    groups = param_groups(model, optim.weight_decay, skip)
    return torch.optim.AdamW(groups, lr=scaled_lr(optim), betas=optim.betas, eps=optim.eps, fused=fused or None)


class WarmupCosine:
    """Linear warmup from `warmup_lr_init` over `warmup` updates, then cosine from each group's initial lr to
    `lr_min` at `total` (and `lr_min` after). `step_update(n)` sets every group's lr for update n; a group's
    `lr_scale` multiplies it. The lr is a function of n alone, so a resumed run only calls `step_update`."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, total: int, lr_min: float, warmup: int, warmup_lr_init: float
    ) -> None:
        if total < 1:
            raise ValueError(f"the schedule needs at least one step, got total={total}")
        self.optimizer, self.total, self.lr_min = optimizer, total, lr_min
        self.warmup, self.warmup_lr_init = warmup, warmup_lr_init
        for g in optimizer.param_groups:
            g.setdefault("initial_lr", g["lr"])
        self.base = [g["initial_lr"] for g in optimizer.param_groups]
        self._set([warmup_lr_init] * len(self.base) if warmup else self.base)

    def lr_at(self, n: int) -> list[float]:
        if n < self.warmup:
            w = self.warmup_lr_init  # timm's arithmetic, to the last bit: the slope first, then n times it
            return [w + n * ((b - w) / self.warmup) for b in self.base]
        if n >= self.total:
            return [self.lr_min] * len(self.base)
        c = 1 + math.cos(math.pi * n / self.total)
        return [self.lr_min + 0.5 * (b - self.lr_min) * c for b in self.base]

    def step_update(self, num_updates: int) -> None:
        self._set(self.lr_at(num_updates))

    def _set(self, lrs: list[float]) -> None:
        for g, lr in zip(self.optimizer.param_groups, lrs):
            g["lr"] = lr * g["lr_scale"] if "lr_scale" in g else lr

    def state_dict(self) -> dict[str, Any]:
        return {"total": self.total, "lr_min": self.lr_min, "warmup": self.warmup, "base": list(self.base)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The schedule is rebuilt from the config; a saved state (ours, or timm's from older checkpoints)
        restores only the groups' base lrs, which the optimizer's own state also carries."""
        base = state.get("base") or state.get("base_values")
        if base is not None and len(base) == len(self.base):
            self.base = [float(b) for b in base]


def build_scheduler(optimizer: torch.optim.Optimizer, sched: ScheduleSection) -> WarmupCosine:
    """Linear warmup from `warmup_lr_init` over the first `warmup_fraction` of steps, then cosine to `min_lr`.

    Stepped per optimizer update: call `scheduler.step_update(step)` with the number of updates done.
    """
    warmup = int(round(sched.warmup_fraction * sched.steps))
    return WarmupCosine(optimizer, sched.steps, sched.min_lr, warmup, sched.warmup_lr_init)
