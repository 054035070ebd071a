"""A compact, faithful re-implementation of Apple's ml-aim v1 PyTorch modules, to check our weights against.

Credit: written from apple/ml-aim `aim-v1/aim/v1/torch/layers.py`, `models.py` and `mixins.py` (Apple Inc., 2024);
same module and parameter names, same computations, unused options (cls token, dropout, LoRA, prefix
attention, absolute positions) left out. Only what AIM v1's `_aim` factory builds.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AppleAIM", "apple_aim"]

LayerNorm = functools.partial(nn.LayerNorm, eps=1e-6)


def sincos_pos_embed(h: int, w: int, dim: int) -> torch.Tensor:
    """`SinCosPosEmbed.forward` (float32, as Apple computes it): (h*w, dim)."""
    grid = torch.stack(torch.meshgrid(torch.arange(w).float(), torch.arange(h).float(), indexing="xy"))
    grid = grid.reshape(2, 1, h, w)

    def one_d(d: int, pos: torch.Tensor) -> torch.Tensor:
        omega = 1.0 / 10000 ** (torch.arange(d // 2).float() / (d / 2.0))
        out = pos.reshape(-1)[:, None] * omega[None, :]
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)

    return torch.cat([one_d(dim // 2, grid[0]), one_d(dim // 2, grid[1])], dim=1)


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = (patch_size, patch_size)
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class ViTPreprocessor(nn.Module):
    def __init__(self, patchifier: PatchEmbed) -> None:
        super().__init__()
        self.patchifier = patchifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        tokens = self.patchifier(x)
        p_h, p_w = self.patchifier.patch_size
        return tokens + sincos_pos_embed(h // p_h, w // p_w, tokens.shape[-1]).unsqueeze(0)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)  # qkv_bias=False
        self.proj = nn.Linear(dim, dim, bias=False)  # use_bias=False (Transformer's default)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).contiguous().reshape(b, n, c))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=False)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, hidden: int) -> None:
        super().__init__()
        self.attn = Attention(dim, num_heads)
        self.norm_1 = LayerNorm(dim)
        self.mlp = MLP(dim, hidden)
        self.norm_2 = LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm_1(x))
        return x + self.mlp(self.norm_2(x))


class AverageLayers(nn.Module):
    def __init__(self, layers: tuple[int, ...]) -> None:
        super().__init__()
        self.layers = layers

    def forward(self, _: torch.Tensor, layer_features: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([layer_features[i] for i in self.layers], dim=-1).mean(dim=-1)


class Transformer(nn.Module):
    def __init__(self, dim: int, depth: int, num_heads: int, probe_layers: tuple[int, ...]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, num_heads, 4 * dim) for _ in range(depth))
        self.post_trunk_norm = LayerNorm(dim)
        self.post_transformer_layer = AverageLayers(probe_layers)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        features = []
        for blk in self.blocks:
            tokens = blk(tokens)
            features.append(tokens)
        tokens = self.post_trunk_norm(tokens)
        return self.post_transformer_layer(tokens, layer_features=features), features


class AttentionPoolingClassifier(nn.Module):
    def __init__(self, dim: int, out_features: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.linear = nn.Linear(dim, out_features, bias=False)  # linear_bias=False
        self.bn = nn.BatchNorm1d(dim, affine=False, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        h = self.num_heads
        x = self.bn(x.transpose(-2, -1)).transpose(-2, -1)
        q = self.cls_token.expand(b, -1, -1).reshape(b, 1, h, c // h).permute(0, 2, 1, 3)
        k = self.k(x).reshape(b, n, h, c // h).permute(0, 2, 1, 3)
        v = self.v(x).reshape(b, n, h, c // h).permute(0, 2, 1, 3)
        x_cls = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, 1, c)
        return self.linear(x_cls.mean(dim=1))


class AppleAIM(nn.Module):
    """`AIM(preprocessor, trunk, head)` with `AIMMixin.forward` / `extract_features`."""

    def __init__(self, patch: int, dim: int, depth: int, heads: int, classes: int, probe_layers: tuple[int, ...]):
        super().__init__()
        self.preprocessor = ViTPreprocessor(PatchEmbed(patch, dim))
        self.trunk = Transformer(dim, depth, heads, probe_layers)
        self.head = AttentionPoolingClassifier(dim, classes, heads)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats, block_outputs = self.trunk(self.preprocessor(x))
        return self.head(feats), block_outputs


def apple_aim(patch: int, dim: int, depth: int, heads: int, classes: int, probe_layers: int = 6) -> AppleAIM:
    """Like `aim.v1.torch.models._aim`: `probe_layers` = the last N blocks."""
    return AppleAIM(patch, dim, depth, heads, classes, tuple(range(max(0, depth - probe_layers), depth)))
