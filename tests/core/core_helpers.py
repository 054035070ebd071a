"""Shared helpers for the aim_core tests (imported by the test_core_* files): tiny models, seeded images,
fitted kmeans/dVAE targets."""

from __future__ import annotations

import torch

import aim_core


def seeded_images(batch: int, size: int | tuple[int, int] = 16, seed: int = 0) -> torch.Tensor:
    h, w = (size, size) if isinstance(size, int) else size
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


def build(seed: int = 0, **overrides) -> aim_core.AIM:
    """`aim-test` with overrides, SDPA path, deterministic init, eval mode."""
    torch.manual_seed(seed)
    overrides.setdefault("attn_impl", "sdpa")
    return aim_core.build_model(overrides.pop("preset", "aim-test"), **overrides).eval()


def perturb_patch(images: torch.Tensor, raster_idx: int, patch: int, scale: float = 3.0, seed: int = 1) -> torch.Tensor:
    """A copy of `images` with the patch at raster index `raster_idx` overwritten by fresh noise."""
    out = images.clone()
    gw = images.shape[-1] // patch
    r, c = divmod(raster_idx, gw)
    noise = torch.randn(images.shape[0], 3, patch, patch, generator=torch.Generator().manual_seed(seed))
    out[:, :, r * patch : (r + 1) * patch, c * patch : (c + 1) * patch] = scale * noise
    return out


def fit_target(model: aim_core.AIM, images: torch.Tensor) -> aim_core.AIM:
    """Give a kmeans/dvae target what it needs (a codebook / a briefly trained tokenizer)."""
    cfg = model.config
    if cfg.target == "kmeans":
        feats = model.target.patch_features(images)
        model.target.set_codebook(aim_core.fit_kmeans(feats, cfg.num_clusters, iters=3, seed=0))
    elif cfg.target == "dvae":
        model.target.set_tokenizer(_tokenizer(cfg.patch_size, cfg.dvae_vocab, images))
    return model


_TOKENIZERS: dict = {}


def _tokenizer(patch: int, vocab: int, images: torch.Tensor) -> aim_core.DVAE:
    key = (patch, vocab, tuple(images.shape))
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = aim_core.train_dvae([images], patch, vocab, steps=3, seed=0)
    return _TOKENIZERS[key]
