"""Prediction targets and their losses, selectable by name: the registry `TARGET_TYPES` (name -> class).

Every target turns images (B, 3, H, W) into per-patch targets in raster order and scores head
predictions (B, K-1, D_out) against targets (B, K-1, ...) on the positions `loss_mask` (B, K-1) selects.
A target also owns what the pipeline would otherwise branch on by name: whether it must be fitted before
pre-training (`needs_fit`, `fit`: k-means codebook, dVAE tokenizer), the state that fitting produces
(`fit_state` / `load_fit_state`, a flat dict of tensors) and how its predictions look as pixels
(`predicted_patches`, for the prediction images).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from aim_core.dvae import DVAE, train_dvae
from aim_core.kmeans import assign_clusters, fit_kmeans
from aim_core.patches import normalize_patches, patchify

__all__ = ["TARGETS", "TARGET_TYPES", "build_target", "Target"]


def _masked_mean(per_pos: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    m = loss_mask.to(per_pos.dtype)
    return (per_pos * m).sum() / m.sum().clamp_min(1.0)


def _denormalize(pred: torch.Tensor, true_next: torch.Tensor, eps: float) -> torch.Tensor:
    """Per-patch normalised predictions back to pixels with each true patch's own mean/std."""
    mean, std = true_next.mean(-1, keepdim=True), (true_next.var(-1, keepdim=True) + eps).sqrt()
    return pred * std + mean


class Target(nn.Module):
    name = "base"
    out_dim: int
    needs_fit = False  # True: `fit` (or `load_fit_state`) must run before `make`

    def make(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def loss(self, pred: torch.Tensor, target: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover

    @classmethod
    def build(cls, patch_size: int, num_clusters: int, dvae_vocab: int, norm_pix_eps: float) -> Target:
        """This target from the AIMConfig fields (each target takes the ones it uses)."""
        raise NotImplementedError  # pragma: no cover

    def fit(self, images: torch.Tensor, steps: int, seed: int) -> None:
        """Fit what the target needs on training images (N, 3, H, W); nothing for pixel targets."""

    def fit_state(self) -> dict[str, torch.Tensor]:
        """What `fit` produced, to hand to other processes (`load_fit_state`); {} when nothing is fitted."""
        return {}

    def load_fit_state(self, state: dict[str, torch.Tensor]) -> None:
        """Install a `fit_state()` from elsewhere."""

    def predicted_patches(
        self, pred: torch.Tensor, true_seq: torch.Tensor, perm: torch.Tensor, inverse: torch.Tensor, grid
    ) -> torch.Tensor:
        """Head predictions (N, K-1, D) as patches (N, K-1, p*p*3) in the images' normalised pixel space, in
        sequence order; `true_seq` (N, K, p*p*3) are the true patches in sequence order."""
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

    @classmethod
    def build(cls, patch_size, num_clusters, dvae_vocab, norm_pix_eps) -> PixelTarget:
        return cls(patch_size, normalize=False)

    def predicted_patches(self, pred, true_seq, perm, inverse, grid) -> torch.Tensor:
        return _denormalize(pred, true_seq[:, 1:], self.eps) if self.normalize else pred


class NormPixelTarget(PixelTarget):
    """`PixelTarget` with each patch normalised (AIM's best target)."""

    def __init__(self, patch_size: int, eps: float = 1e-6, channels: int = 3) -> None:
        super().__init__(patch_size, normalize=True, eps=eps, channels=channels)

    @classmethod
    def build(cls, patch_size, num_clusters, dvae_vocab, norm_pix_eps) -> NormPixelTarget:
        return cls(patch_size, eps=norm_pix_eps)


class _ClassTarget(Target):
    def loss(self, pred: torch.Tensor, target: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
        per_pos = F.cross_entropy(pred.float().flatten(0, 1), target.flatten(), reduction="none")
        return _masked_mean(per_pos.view_as(target), loss_mask)


class KMeansTarget(_ClassTarget):
    """Cluster id of each (per-patch normalised) patch under a fitted codebook; cross-entropy."""

    name = "kmeans"

    needs_fit = True

    def __init__(self, patch_size: int, num_clusters: int, channels: int = 3, view_eps: float = 1e-6) -> None:
        super().__init__()
        self.patch_size, self.view_eps = patch_size, view_eps  # view_eps: only for `predicted_patches`
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

    @classmethod
    def build(cls, patch_size, num_clusters, dvae_vocab, norm_pix_eps) -> KMeansTarget:
        return cls(patch_size, num_clusters, view_eps=norm_pix_eps)

    def fit(self, images: torch.Tensor, steps: int, seed: int) -> None:
        self.set_codebook(fit_kmeans(self.patch_features(images), self.out_dim, iters=steps, seed=seed))

    def fit_state(self) -> dict[str, torch.Tensor]:
        return {"centroids": self.centroids}

    def load_fit_state(self, state: dict[str, torch.Tensor]) -> None:
        self.set_codebook(state["centroids"])

    def predicted_patches(self, pred, true_seq, perm, inverse, grid) -> torch.Tensor:
        return _denormalize(self.centroids[pred.argmax(-1)], true_seq[:, 1:], self.view_eps)


class DVAETarget(_ClassTarget):
    """Codes of a frozen discrete VAE tokenizer (one per patch); cross-entropy."""

    name = "dvae"

    needs_fit = True

    def __init__(self, patch_size: int, vocab_size: int, hidden: int = 128) -> None:
        super().__init__()
        self.patch_size, self.hidden = patch_size, hidden
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

    @classmethod
    def build(cls, patch_size, num_clusters, dvae_vocab, norm_pix_eps) -> DVAETarget:
        return cls(patch_size, dvae_vocab)

    def fit(self, images: torch.Tensor, steps: int, seed: int) -> None:
        batches = list(images.split(64))
        self.set_tokenizer(train_dvae(batches, self.patch_size, self.out_dim, self.hidden, steps=steps, seed=seed))

    def fit_state(self) -> dict[str, torch.Tensor]:
        return {f"tokenizer.{k}": v for k, v in self.tokenizer.state_dict().items()}

    def load_fit_state(self, state: dict[str, torch.Tensor]) -> None:
        self.tokenizer.load_state_dict({k.removeprefix("tokenizer."): v for k, v in state.items()})
        self.fitted.fill_(True)

    def predicted_patches(self, pred, true_seq, perm, inverse, grid) -> torch.Tensor:
        codes = torch.cat([torch.zeros_like(pred[:, :1, 0], dtype=torch.long), pred.argmax(-1)], 1)  # seq order
        decoded = self.tokenizer.decode_codes(codes[:, inverse], grid)  # (N, 3, H, W), patch 0 a placeholder
        return patchify(decoded, self.patch_size)[:, perm][:, 1:]

    def train(self, mode: bool = True) -> DVAETarget:
        super().train(mode)
        self.tokenizer.eval()  # the tokenizer is frozen
        return self


# The one registry of targets: name -> class. Every other list of target names derives from it.
TARGET_TYPES: dict[str, type[Target]] = {
    "pixel": PixelTarget,
    "norm_pixel": NormPixelTarget,
    "kmeans": KMeansTarget,
    "dvae": DVAETarget,
}
TARGETS = tuple(TARGET_TYPES)


def build_target(
    name: str, patch_size: int, num_clusters: int = 512, dvae_vocab: int = 512, norm_pix_eps: float = 1e-6
) -> Target:
    if name not in TARGET_TYPES:
        raise ValueError(f"unknown target {name!r}; choose one of {', '.join(TARGETS)}")
    return TARGET_TYPES[name].build(patch_size, num_clusters, dvae_vocab, norm_pix_eps)
