"""AdamW with AIM's recipe and a per-step warmup + cosine schedule (timm helpers)."""

from __future__ import annotations

import torch
from timm.optim import param_groups_weight_decay
from timm.scheduler import CosineLRScheduler
from torch import nn

from pipelines.config import OptimSection, ScheduleSection

__all__ = ["scaled_lr", "build_optimizer", "build_scheduler"]


def scaled_lr(optim: OptimSection) -> float:
    """The learning rate is given per 256 images and scaled linearly by the global batch."""
    return optim.lr * optim.batch_size / 256


def build_optimizer(model: nn.Module, optim: OptimSection, fused: bool = False) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases, norms and positional embeddings (`model.no_weight_decay()`)."""
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    groups = param_groups_weight_decay(model, optim.weight_decay, no_weight_decay_list=skip)
    return torch.optim.AdamW(groups, lr=scaled_lr(optim), betas=optim.betas, eps=optim.eps, fused=fused or None)


def build_scheduler(optimizer: torch.optim.Optimizer, sched: ScheduleSection) -> CosineLRScheduler:
    """Linear warmup from `warmup_lr_init` over the first `warmup_fraction` of steps, then cosine to `min_lr`.

    Stepped per optimizer update: call `scheduler.step_update(step)` with the number of updates done.
    """
    warmup = int(round(sched.warmup_fraction * sched.steps))
    return CosineLRScheduler(
        optimizer,
        t_initial=sched.steps,
        lr_min=sched.min_lr,
        warmup_t=warmup,
        warmup_lr_init=sched.warmup_lr_init,
        warmup_prefix=False,
        t_in_epochs=False,
    )
