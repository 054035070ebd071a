"""FlexAttention fast path for the prefix mask (CUDA only; FlexAttention has no CPU backward).

The block mask is built once per forward and shared by every layer.
"""

from __future__ import annotations

import functools

import torch

__all__ = ["ATTN_IMPLS", "flex_available", "prefix_block_mask", "flex_attention"]

# How attention is computed: auto (FlexAttention on CUDA for causal/prefix, else SDPA) | sdpa | flex.
ATTN_IMPLS = ("auto", "sdpa", "flex")


def flex_available(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    try:
        from torch.nn.attention import flex_attention as _  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention as _flex

    return torch.compile(_flex, dynamic=False)


def flex_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask) -> torch.Tensor:
    if torch.compiler.is_compiling():  # inside a compiled block: let that compilation trace the kernel
        from torch.nn.attention.flex_attention import flex_attention as _flex

        return _flex(q, k, v, block_mask=block_mask)
    return _compiled_flex()(q, k, v, block_mask=block_mask)


def prefix_block_mask(prefix_len: torch.Tensor | None, num_patches: int, batch: int, device: torch.device):
    """BlockMask for `k < S[b] or k <= q` (causal when prefix_len is None)."""
    from torch.nn.attention.flex_attention import create_block_mask

    if prefix_len is None:

        def mask_mod(b, h, q_idx, kv_idx):
            return kv_idx <= q_idx

        return create_block_mask(mask_mod, None, None, num_patches, num_patches, device=device)

    s = prefix_len.to(device)

    def mask_mod(b, h, q_idx, kv_idx):  # noqa: F811
        return (kv_idx < s[b]) | (kv_idx <= q_idx)

    return create_block_mask(mask_mod, batch, None, num_patches, num_patches, device=device)
