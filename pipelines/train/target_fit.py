"""Fit the target's state (kmeans codebook, dVAE tokenizer) on training images before pre-training (driver
side), and hand it to the workers as bytes. What to fit and what to save is the target's own (`aim_core.targets`:
`needs_fit`, `fit`, `fit_state`, `load_fit_state`); this module only serializes it."""

from __future__ import annotations

import io

import torch

from aim_core import AIM

__all__ = ["fit_target_state", "load_target_state"]


def fit_target_state(model: AIM, images: torch.Tensor, steps: int, seed: int) -> bytes | None:
    """Fit what the model's target needs on `images` (N, 3, H, W); returns serialized state (or None)."""
    if not model.target.needs_fit:
        return None
    model.target.fit(images, steps, seed)
    buf = io.BytesIO()
    torch.save(model.target.fit_state(), buf)
    return buf.getvalue()


def load_target_state(model: AIM, blob: bytes) -> None:
    model.target.load_fit_state(torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True))
