"""`aimctl probe`: frozen trunk, bidirectional features, attentive + linear probes, top-1 on the test split."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from aim_core import AIM, AttentiveProbe, LinearProbe
from pipelines.config import ExperimentConfig, ProbeSection

__all__ = ["ProbeResult", "extract", "train_probe", "run_probes"]


@dataclass
class ProbeResult:
    attentive_top1: float
    linear_top1: float
    num_train: int
    num_test: int
    blocks: list[int]


@torch.no_grad()
def extract(model: AIM, images: torch.Tensor, blocks: list[int], batch_size: int = 256, progress=None) -> torch.Tensor:
    """Features (N, K, d) in bf16 on the CPU to halve memory (computed once: the probes' feature cache), by
    the model on its own device (the GPU when `probe_checkpoint` put it there)."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for chunk in images.split(batch_size):
        out.append(model.extract_features(chunk.to(device).float(), blocks).to(torch.bfloat16).cpu())
        if progress is not None:
            progress(len(chunk))
    return torch.cat(out)


def _cosine_lr(opt: torch.optim.Optimizer, base: float, step: int, total: int, warmup: int) -> None:
    lr = base * step / max(warmup, 1) if step < warmup else base * 0.5 * (1 + math.cos(math.pi * step / total))
    for g in opt.param_groups:
        g["lr"] = lr


def train_probe(
    probe: nn.Module,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    cfg: ProbeSection,
    seed: int = 0,
) -> float:
    """AdamW + warmup/cosine on cached features; returns top-1 (%) on the test features."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(probe.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = train_x.shape[0]
    steps_per_epoch = max(1, n // cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    step = 0
    probe.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=gen)
        for i in range(steps_per_epoch):
            idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            _cosine_lr(opt, cfg.lr, step, total, warmup=max(1, total // 20))
            loss = F.cross_entropy(probe(train_x[idx].float()), train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    return evaluate(probe, test_x, test_y)


@torch.no_grad()
def evaluate(probe: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    probe.eval()
    correct = sum(
        int((probe(xb.float()).argmax(-1) == yb).sum()) for xb, yb in zip(x.split(batch_size), y.split(batch_size))
    )
    return 100.0 * correct / max(len(y), 1)


def _seeded(make, seed: int) -> nn.Module:
    """A probe whose initial weights depend on `seed` only, not on what else this process drew before (a
    sweep trial's process may have trained or probed other trials first)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


def run_probes(
    cfg: ExperimentConfig,
    model: AIM,
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    progress=None,
) -> ProbeResult:
    blocks = model.resolve_blocks(cfg.probe.blocks)
    train_x, test_x = (
        extract(model, train[0], blocks, progress=progress),
        extract(model, test[0], blocks, progress=progress),
    )
    classes = int(max(train[1].max(), test[1].max())) + 1
    d, heads = model.config.width, model.config.num_heads
    attentive = lambda: AttentiveProbe(d, classes, heads, cfg.probe.linear_bias)  # noqa: E731
    att = train_probe(_seeded(attentive, cfg.seed), train_x, train[1], test_x, test[1], cfg.probe, cfg.seed)
    lin = train_probe(
        _seeded(lambda: LinearProbe(d, classes), cfg.seed), train_x, train[1], test_x, test[1], cfg.probe, cfg.seed
    )
    return ProbeResult(att, lin, len(train[1]), len(test[1]), blocks)
