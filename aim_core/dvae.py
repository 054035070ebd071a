"""A small discrete VAE tokenizer for the `dvae` target: one code per AIM patch.

Encoder: patch conv (stride = patch) -> 3x3 conv over the patch grid (context) -> logits over the
vocabulary per patch. Decoder: code embedding -> 3x3 conv -> transposed patch conv. Trained with
Gumbel-softmax relaxation (temperature annealed) and a small KL to the uniform prior, as in DALL-E's dVAE.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DVAE", "train_dvae"]


class DVAE(nn.Module):
    def __init__(self, patch_size: int, vocab_size: int = 512, hidden: int = 128, channels: int = 3) -> None:
        super().__init__()
        self.patch_size, self.vocab_size, self.hidden = patch_size, vocab_size, hidden
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, hidden, patch_size, stride=patch_size),
            nn.GELU(),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(hidden, vocab_size, 1),
        )
        self.codebook = nn.Conv2d(vocab_size, hidden, 1, bias=False)  # one-hot (soft) -> embedding
        self.decoder = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.GELU(),
            nn.ConvTranspose2d(hidden, channels, patch_size, stride=patch_size),
        )

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images)  # (B, V, gh, gw)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Code ids (B, K) in raster order."""
        return self.logits(images).argmax(1).flatten(1)

    def decode_codes(self, codes: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        one_hot = F.one_hot(codes.reshape(-1, *grid), self.vocab_size).permute(0, 3, 1, 2).float()
        return self.decoder(self.codebook(one_hot))

    def forward(self, images: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.logits(images)
        soft = F.gumbel_softmax(logits, tau=tau, dim=1)
        recon = self.decoder(self.codebook(soft))
        return recon, logits


def train_dvae(
    batches: Iterable[torch.Tensor],
    patch_size: int,
    vocab_size: int = 512,
    hidden: int = 128,
    steps: int = 500,
    lr: float = 1e-3,
    kl_weight: float = 1e-3,
    seed: int = 0,
) -> DVAE:
    """Train a DVAE on (B, 3, H, W) normalised image batches (cycled until `steps`). Returns it in eval mode."""
    torch.manual_seed(seed)
    model = DVAE(patch_size, vocab_size, hidden)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    batches = list(batches) if not isinstance(batches, list) else batches
    if not batches:
        raise ValueError("train_dvae needs at least one batch of images")
    log_v = math.log(vocab_size)
    for step in range(steps):
        images = batches[step % len(batches)]
        tau = max(1.0 / 16, math.exp(-5 * step / max(steps, 1)))  # anneal 1 -> 1/16
        recon, logits = model(images, tau)
        log_q = F.log_softmax(logits, dim=1)
        kl = (log_q.exp() * (log_q + log_v)).sum(1).mean()  # KL(q || uniform)
        loss = F.mse_loss(recon, images) + kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval().requires_grad_(False)
