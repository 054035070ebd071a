"""Fit the kmeans codebook or dVAE tokenizer on training images before pre-training (driver side)."""

from __future__ import annotations

import io

import torch

from aim_core import AIM, fit_kmeans, train_dvae

__all__ = ["fit_target_state", "load_target_state"]


def fit_target_state(model: AIM, images: torch.Tensor, steps: int, seed: int) -> bytes | None:
    """Fit what the model's target needs on `images` (N, 3, H, W); returns serialized state (or None)."""
    name = model.config.target
    if name == "kmeans":
        feats = model.target.patch_features(images)
        state = {"centroids": fit_kmeans(feats, model.config.num_clusters, iters=steps, seed=seed)}
    elif name == "dvae":
        batches = list(images.split(64))
        tok = train_dvae(batches, model.config.patch_size, model.config.dvae_vocab, steps=steps, seed=seed)
        state = {f"tokenizer.{k}": v for k, v in tok.state_dict().items()}
    else:
        return None
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def load_target_state(model: AIM, blob: bytes) -> None:
    state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    if "centroids" in state:
        model.target.set_codebook(state["centroids"])
    else:
        model.target.tokenizer.load_state_dict({k.removeprefix("tokenizer."): v for k, v in state.items()})
        model.target.fitted.fill_(True)
