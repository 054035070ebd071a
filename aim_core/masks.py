"""Attention masks. Convention: `may_attend[b, q, k]` is True where query q may attend key k."""

from __future__ import annotations

import torch

__all__ = ["ATTENTION_MODES", "PRETRAIN_ATTENTION", "sample_prefix_len", "may_attend", "loss_positions"]

ATTENTION_MODES = ("causal", "prefix", "bidirectional")
# The modes a model is pre-trained in (bidirectional is for features and probes only).
PRETRAIN_ATTENTION = ("causal", "prefix")


def sample_prefix_len(
    batch: int, num_patches: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Per-image prefix length S ~ U{1, ..., K-1} (AIM's prefix attention). Returns (B,) long."""
    if num_patches < 2:
        raise ValueError("prefix attention needs at least 2 patches")
    s = torch.randint(1, num_patches, (batch,), generator=generator)
    if torch.device(device).type == "cuda":  # pinned + non_blocking: no host-device sync in the step
        return s.pin_memory().to(device, non_blocking=True)
    return s.to(device)


def may_attend(
    mode: str,
    num_patches: int,
    batch: int = 1,
    prefix_len: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor | None:
    """Boolean mask (B, 1, K, K) for SDPA, or None for bidirectional attention.

    causal: k <= q.  prefix (with prefix_len S): k < S[b] or k <= q; prefix_len=None means causal.
    """
    if mode == "bidirectional":
        return None
    if mode not in ATTENTION_MODES:
        raise ValueError(f"unknown attention mode {mode!r}; choose one of {', '.join(ATTENTION_MODES)}")
    idx = torch.arange(num_patches, device=device)
    causal = idx[None, :] <= idx[:, None]  # (K, K): [q, k]
    if mode == "causal" or prefix_len is None:
        return causal.expand(batch, 1, num_patches, num_patches)
    in_prefix = idx[None, :] < prefix_len.to(device)[:, None]  # (B, K): key k is in the prefix
    return causal[None, None] | in_prefix[:, None, None, :]


def loss_positions(
    num_patches: int, batch: int, prefix_len: torch.Tensor | None = None, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """(B, K-1) bool: which predictions count in the loss.

    Prediction i (output at position i) is for patch i+1. With a prefix S, only targets outside the prefix
    (i+1 >= S) count: earlier outputs have seen their target through the bidirectional prefix.
    """
    target_idx = torch.arange(1, num_patches, device=device)[None, :].expand(batch, -1)
    if prefix_len is None:
        return torch.ones_like(target_idx, dtype=torch.bool)
    return target_idx >= prefix_len.to(device)[:, None]
