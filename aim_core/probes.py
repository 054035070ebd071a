"""Evaluation probes on frozen trunk features (B, K, d)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AttentiveProbe", "LinearProbe"]


class AttentiveProbe(nn.Module):
    """AIM's attentive probe (ml-aim `AttentionPoolingClassifier`): BatchNorm (no affine) on the tokens,
    one learnable query (no query projection), bias-free key/value projections, heads = trunk heads,
    softmax attention pooling, then Linear(d, classes). About 2d^2 parameters.

    `linear_bias`: whether the output Linear has a bias. False, as in ml-aim (`linear_bias=False`), so its
    published heads load unchanged; this probe had one before. Shapes: (B, K, d) -> (B, classes)."""

    def __init__(self, dim: int, num_classes: int, num_heads: int, linear_bias: bool = False) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"probe width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.bn = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.query = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.linear = nn.Linear(dim, num_classes, bias=linear_bias)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        b, n, d = feats.shape
        h = self.num_heads
        x = self.bn(feats.transpose(1, 2)).transpose(1, 2)
        q = self.query.expand(b, -1, -1).reshape(b, 1, h, d // h).transpose(1, 2)  # (B, h, 1, hd)
        k = self.k(x).reshape(b, n, h, d // h).transpose(1, 2)  # (B, h, K, hd)
        v = self.v(x).reshape(b, n, h, d // h).transpose(1, 2)
        pooled = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, d)
        return self.linear(pooled)


class LinearProbe(nn.Module):
    """Average-pooled features -> BatchNorm (no affine) -> Linear(d, classes)."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, num_classes)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.linear(self.bn(feats.mean(dim=1)))
