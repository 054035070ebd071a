"""Prediction heads, applied after the trunk's final LayerNorm and thrown away after pre-training.

`none`: one Linear to the target. `mlp`: AIM's per-patch residual MLP head (Apple ml-aim layout:
`x = x + LN1(x); x = x + MLP(LN2(x))`, the attention slot is an identity). `transformer`: the same
width with real (masked) self-attention blocks.
"""

from __future__ import annotations

import torch
from torch import nn

from aim_core.layers import AttnMask, Block, Mlp, sincos_2d

__all__ = ["HEADS", "build_head"]

HEADS = ("none", "mlp", "transformer")


class LinearHead(nn.Module):
    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.out = nn.Linear(dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor, perm: torch.Tensor, mask: AttnMask = None) -> torch.Tensor:
        return self.out(x)


class MLPHeadBlock(nn.Module):
    def __init__(self, width: int, mlp_ratio: float, norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=norm_eps)
        self.norm2 = nn.LayerNorm(width, eps=norm_eps)
        self.mlp = Mlp(width, int(width * mlp_ratio), bias=False)

    def forward(self, x: torch.Tensor, mask: AttnMask = None) -> torch.Tensor:
        x = x + self.norm1(x)  # identity in the attention slot, as in Apple's head
        return x + self.mlp(self.norm2(x))


class DeepHead(nn.Module):
    """Linear(d -> W), + sin-cos positions (in sequence order), N blocks, LayerNorm, Linear(W -> out)."""

    def __init__(
        self,
        dim: int,
        out_dim: int,
        width: int,
        depth: int,
        mlp_ratio: float,
        grid: tuple[int, int],
        num_heads: int | None,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.proj_in = nn.Linear(dim, width, bias=False)
        self.register_buffer("pos_embed", sincos_2d(width, grid), persistent=False)
        if num_heads is None:
            self.blocks = nn.ModuleList(MLPHeadBlock(width, mlp_ratio, norm_eps) for _ in range(depth))
        else:
            self.blocks = nn.ModuleList(Block(width, num_heads, mlp_ratio, norm_eps) for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=norm_eps)
        self.out = nn.Linear(width, out_dim, bias=False)

    def forward(self, x: torch.Tensor, perm: torch.Tensor, mask: AttnMask = None) -> torch.Tensor:
        x = self.proj_in(x) + self.pos_embed[perm].to(x.dtype)  # (B, K, W)
        for blk in self.blocks:
            x = blk(x, mask)
        return self.out(self.norm(x))


def build_head(
    kind: str,
    dim: int,
    out_dim: int,
    width: int,
    depth: int,
    mlp_ratio: float,
    grid: tuple[int, int],
    num_heads: int,
    norm_eps: float = 1e-6,
) -> nn.Module:
    """The prediction head `kind`; `norm_eps` is the eps of its LayerNorms (`AIMConfig.norm_eps`)."""
    if kind == "none":
        return LinearHead(dim, out_dim)
    if kind == "mlp":
        return DeepHead(dim, out_dim, width, depth, mlp_ratio, grid, num_heads=None, norm_eps=norm_eps)
    if kind == "transformer":
        return DeepHead(dim, out_dim, width, depth, mlp_ratio, grid, num_heads=num_heads, norm_eps=norm_eps)
    raise ValueError(f"unknown head {kind!r}; choose one of {', '.join(HEADS)}")
