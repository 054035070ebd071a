"""Prediction targets and their losses, selectable by name.

Every target turns images (B, 3, H, W) into per-patch targets in raster order and scores head
predictions (B, K-1, D_out) against targets (B, K-1, ...) on the positions `loss_mask` (B, K-1) selects.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from aim_core.dvae import DVAE
from aim_core.kmeans import assign_clusters
from aim_core.patches import normalize_patches, patchify

__all__ = ["TARGETS", "build_target", "Target"]

TARGETS = ("pixel", "norm_pixel", "kmeans", "dvae")


def _masked_mean(per_pos: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    m = loss_mask.to(per_pos.dtype)
    return (per_pos * m).sum() / m.sum().clamp_min(1.0)


class Target(nn.Module):
    name = "base"
    out_dim: int

    def make(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def loss(self, pred: torch.Tensor, target: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover


class PixelTarget(Target):
    """MSE on the patchified (mean/std-normalised) image; `normalize=True` also normalises each patch."""

    def __init__(self, patch_size: int, normalize: bool, eps: float = 1e-6, channels: int = 3) -> None:
        super().__init__()
        self.patch_size, self.normalize, self.eps = patch_size, normalize, eps
        self.name = "norm_pixel" if normalize else "pixel"
        self.out_dim = patch_size * patch_size * channels

    def make(self, images: torch.Tensor) -> torch.Tensor:
        t = patchify(images.float(), self.patch_size)
        return normalize_patches(t, self.eps) if self.normalize else t

    def loss(self, pred: torch.Tensor, target: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
        per_pos = ((pred.float() - target) ** 2).mean(dim=-1)  # mean over the patch's values
        return _masked_mean(per_pos, loss_mask)


class _ClassTarget(Target):
    def loss(self, pred: torch.Tensor, target: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
        per_pos = F.cross_entropy(pred.float().flatten(0, 1), target.flatten(), reduction="none")
        return _masked_mean(per_pos.view_as(target), loss_mask)


class KMeansTarget(_ClassTarget):
    """Cluster id of each (per-patch normalised) patch under a fitted codebook; cross-entropy."""

    name = "kmeans"

    def __init__(self, patch_size: int, num_clusters: int, channels: int = 3) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.out_dim = num_clusters
        self.register_buffer("centroids", torch.zeros(num_clusters, patch_size * patch_size * channels))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def patch_features(self, images: torch.Tensor) -> torch.Tensor:
        """What the codebook clusters: per-patch normalised pixels (N, p*p*C)."""
        return normalize_patches(patchify(images.float(), self.patch_size)).flatten(0, 1)

    def set_codebook(self, centroids: torch.Tensor) -> None:
        if centroids.shape != self.centroids.shape:
            raise ValueError(f"codebook shape {tuple(centroids.shape)} != expected {tuple(self.centroids.shape)}")
        self.centroids.copy_(centroids)
        self.fitted.fill_(True)

    @torch.no_grad()
    def make(self, images: torch.Tensor) -> torch.Tensor:
        if not bool(self.fitted):
            raise RuntimeError("kmeans target has no codebook: fit one (aim_core.fit_kmeans) and call set_codebook")
        feats = self.patch_features(images)
        return assign_clusters(feats, self.centroids).view(images.shape[0], -1)


class DVAETarget(_ClassTarget):
    """Codes of a frozen discrete VAE tokenizer (one per patch); cross-entropy."""

    name = "dvae"

    def __init__(self, patch_size: int, vocab_size: int, hidden: int = 128) -> None:
        super().__init__()
        self.out_dim = vocab_size
        self.tokenizer = DVAE(patch_size, vocab_size, hidden).requires_grad_(False)
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def set_tokenizer(self, tokenizer: DVAE) -> None:
        self.tokenizer.load_state_dict(tokenizer.state_dict())
        self.fitted.fill_(True)

    @torch.no_grad()
    def make(self, images: torch.Tensor) -> torch.Tensor:
        if not bool(self.fitted):
            raise RuntimeError("dvae target has no tokenizer: train one (aim_core.train_dvae) and call set_tokenizer")
        return self.tokenizer.eval().encode(images.float())

    def train(self, mode: bool = True) -> DVAETarget:
        super().train(mode)
        self.tokenizer.eval()  # the tokenizer is frozen
        return self


def build_target(
    name: str, patch_size: int, num_clusters: int = 512, dvae_vocab: int = 512, norm_pix_eps: float = 1e-6
) -> Target:
    if name == "pixel":
        return PixelTarget(patch_size, normalize=False)
    if name == "norm_pixel":
        return PixelTarget(patch_size, normalize=True, eps=norm_pix_eps)
    if name == "kmeans":
        return KMeansTarget(patch_size, num_clusters)
    if name == "dvae":
        return DVAETarget(patch_size, dvae_vocab)
    raise ValueError(f"unknown target {name!r}; choose one of {', '.join(TARGETS)}")
