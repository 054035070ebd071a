"""Patchify / unpatchify and the per-patch normalisation used by the `norm_pixel` target."""

from __future__ import annotations

import torch

__all__ = ["patchify", "unpatchify", "normalize_patches"]


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, K, p*p*C) in raster order; each patch flattened as (p, p, C) like MAE."""
    b, c, h, w = images.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not divisible by patch size {p}")
    gh, gw = h // p, w // p
    x = images.reshape(b, c, gh, p, gw, p)
    x = torch.einsum("bchpwq->bhwpqc", x)  # (B, gh, gw, p, p, C)
    return x.reshape(b, gh * gw, p * p * c)


def unpatchify(patches: torch.Tensor, patch_size: int, grid: tuple[int, int], channels: int = 3) -> torch.Tensor:
    """Inverse of `patchify`: (B, K, p*p*C) with K = gh*gw -> (B, C, gh*p, gw*p)."""
    b, k, _ = patches.shape
    gh, gw = grid
    p = patch_size
    if k != gh * gw:
        raise ValueError(f"{k} patches do not fill a {gh}x{gw} grid")
    x = patches.reshape(b, gh, gw, p, p, channels)
    x = torch.einsum("bhwpqc->bchpwq", x)
    return x.reshape(b, channels, gh * p, gw * p)


def normalize_patches(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Normalise every patch over its own values: (t - mean) / sqrt(var + eps), unbiased var (MAE/AIM)."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True, unbiased=True)
    return (patches - mean) / torch.sqrt(var + eps)
