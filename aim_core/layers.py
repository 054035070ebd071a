"""Trunk building blocks: 2D sin-cos positions, attention (SDPA or FlexAttention), pre-norm blocks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["sincos_2d", "Attention", "Block", "Mlp", "AttnMask", "explicit_attention"]

# An attention mask as passed down the trunk: None (bidirectional), a (B,1,K,K) boolean tensor for SDPA
# (True = may attend), or a FlexAttention BlockMask.
AttnMask = object


class Mlp(nn.Module):
    """Linear -> GELU -> Linear, the parameter names (`fc1`, `fc2`) and arithmetic of `timm.layers.Mlp` with no
    dropout or norm: written here because importing timm costs ~2 s in every process that imports
    aim_core (timm.layers pulls in torchvision and torch._dynamo). tests/core/test_timm_parity.py pins it."""

    def __init__(self, in_features: int, hidden_features: int, bias: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    out = pos.double().reshape(-1)[:, None] * omega[None, :]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_2d(dim: int, grid: tuple[int, int]) -> torch.Tensor:
    """Fixed 2D sin-cos embedding (K, dim) in raster order; half the channels for rows, half for columns.

    Same construction as MAE's `get_2d_sincos_pos_embed` (credit: facebookresearch/mae).
    """
    if dim % 4:
        raise ValueError(f"sin-cos embedding width must be divisible by 4, got {dim}")
    gh, gw = grid
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    emb = torch.cat([_sincos_1d(dim // 2, cols), _sincos_1d(dim // 2, rows)], dim=1)
    return emb.float()


def _lowp_on_cpu(q: torch.Tensor) -> bool:
    return q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16)


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """softmax(q k^T / sqrt(hd), masked) v with the softmax in fp32: what SDPA computes, written out.

    Used for bf16/fp16 on the CPU only, where SDPA's flash kernel (forward + backward) is ~3x slower than
    these two batched matmuls for AIM's short sequences (K <= 256; measured in benchmarks/model_step).
    fp32 and CUDA keep SDPA (there it is as fast or much faster, and memory-efficient).
    """
    scores = torch.matmul(q, k.transpose(-2, -1)).float() * q.shape[-1] ** -0.5  # (B, h, Nq, Nk)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.matmul(scores.softmax(dim=-1).to(v.dtype), v)


class Attention(nn.Module):
    """Multi-head self-attention, bias-free projections; mask semantics: True = may attend.

    `explicit_lowp_cpu`: bf16/fp16 on the CPU goes through `explicit_attention` (True, the default) or SDPA
    like everything else (False; benchmarks/model_step compares the two). Not a weight: no state_dict entry."""

    def __init__(self, dim: int, num_heads: int, explicit_lowp_cpu: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.explicit_lowp_cpu = explicit_lowp_cpu
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, mask: AttnMask = None) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, h, N, hd)
        if (mask is None or isinstance(mask, torch.Tensor)) and self.explicit_lowp_cpu and _lowp_on_cpu(q):
            out = explicit_attention(q, k, v, mask)
        elif mask is None or isinstance(mask, torch.Tensor):
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:  # FlexAttention BlockMask (CUDA fast path for the prefix mask)
            from aim_core.flex import flex_attention

            out = flex_attention(q, k, v, block_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), x + mlp(LN(x)); GELU MLP without biases.

    `norm_eps`: LayerNorm eps, 1e-6 as in ml-aim (see `AIMConfig.norm_eps`)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), bias=False)

    def forward(self, x: torch.Tensor, mask: AttnMask = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


def init_weights(module: nn.Module) -> None:
    """xavier-uniform on Linear (l3m), zero biases, unit LayerNorm; patch conv initialised like a Linear."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight.view(m.weight.shape[0], -1))
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def attention_flops(num_tokens: int, dim: int) -> int:
    """Forward FLOPs of QK^T and AV for one image (2 FLOPs per multiply-add)."""
    return 2 * 2 * num_tokens * num_tokens * dim


def linear_flops(num_tokens: int, fan_in: int, fan_out: int) -> int:
    return 2 * num_tokens * fan_in * fan_out
