"""The AIM model: preprocessor (patches + positions) -> trunk (pre-norm ViT) -> head, plus its objective.

Shapes: B batch, K patches, d trunk width, D target width. Tokens travel in *sequence order* (the
configured autoregressive order); prediction i is for the patch at sequence position i+1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from aim_core import masks
from aim_core.flex import flex_available, prefix_block_mask
from aim_core.heads import build_head
from aim_core.layers import Block, attention_flops, init_weights, linear_flops, sincos_2d
from aim_core.orders import make_order
from aim_core.presets import AIMConfig, resolve_config
from aim_core.targets import build_target

__all__ = ["AIM", "LossOutput", "build_model"]


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar
    pred: torch.Tensor  # (B, K-1, D) predictions for sequence positions 1..K-1
    target: torch.Tensor  # (B, K-1, ...) targets in sequence order
    loss_mask: torch.Tensor  # (B, K-1) bool, True = counted


class Preprocessor(nn.Module):
    """Patch projection (conv with bias) -> LayerNorm -> + fixed 2D sin-cos positions (raster order)."""

    def __init__(self, cfg: AIMConfig) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, cfg.width, cfg.patch_size, stride=cfg.patch_size)
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.register_buffer("pos_embed", sincos_2d(cfg.width, cfg.grid), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # (B, K, d)
        return self.norm(x) + self.pos_embed.to(x.dtype)


class AIM(nn.Module):
    def __init__(self, cfg: AIMConfig) -> None:
        super().__init__()
        self.config = cfg
        self.preprocessor = Preprocessor(cfg)
        self.blocks = nn.ModuleList(
            Block(cfg.width, cfg.num_heads, cfg.mlp_ratio, cfg.norm_eps) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.target = build_target(cfg.target, cfg.patch_size, cfg.num_clusters, cfg.dvae_vocab, cfg.norm_pix_eps)
        self.head = build_head(
            cfg.head,
            cfg.width,
            self.target.out_dim,
            cfg.head_width,
            cfg.head_depth,
            cfg.head_mlp_ratio,
            cfg.grid,
            cfg.head_num_heads,
            cfg.norm_eps,
        )
        order = make_order(cfg.order, cfg.grid, cfg.order_seed)
        self.register_buffer("perm", order.perm, persistent=False)
        self.register_buffer("inverse", order.inverse, persistent=False)
        # Raster order is the identity permutation: skip the (B, K, .) gathers (and their scatter backward).
        self.identity_order = cfg.order == "raster"
        init_weights(self.preprocessor)
        init_weights(self.blocks)
        init_weights(self.head)

    # ---- masks -------------------------------------------------------------------------------
    def sample_prefix_len(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor | None:
        """Prefix lengths for a training batch in prefix mode, else None."""
        if self.config.attention != "prefix":
            return None
        return masks.sample_prefix_len(batch, self.config.num_patches, generator, self.perm.device)

    def build_mask(self, batch: int, prefix_len: torch.Tensor | None, mode: str | None = None):
        """Built once per forward and shared by every layer (SDPA bool mask or FlexAttention BlockMask)."""
        mode = mode or self.config.attention
        if mode == "bidirectional":
            return None
        device = self.perm.device
        impl = self.config.attn_impl
        if impl == "flex" or (impl == "auto" and flex_available(device)):
            return prefix_block_mask(prefix_len if mode == "prefix" else None, self.config.num_patches, batch, device)
        return masks.may_attend(mode, self.config.num_patches, batch, prefix_len, device)

    # ---- forward -----------------------------------------------------------------------------
    def to_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """(B, K, ...) raster order -> sequence order (no copy for raster order)."""
        return x if self.identity_order else x[:, self.perm]

    def repeated_blocks(self) -> list[nn.Module]:
        """Trunk blocks, then head blocks (none for a linear head): the units to compile or shard one by one."""
        return list(self.blocks) + list(getattr(self.head, "blocks", []))

    def forward_trunk(self, images: torch.Tensor, mask=None, keep: Sequence[int] = ()) -> tuple[torch.Tensor, list]:
        """Tokens in sequence order through the trunk. Returns (final-normed x, raw outputs of `keep` blocks)."""
        x = self.to_sequence(self.preprocessor(images))  # (B, K, d), sequence order
        kept = []
        for i, blk in enumerate(self.blocks):
            x = blk(x, mask)
            if i in keep:
                kept.append(x)
        return self.norm(x), kept

    def forward(self, images: torch.Tensor, prefix_len: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, H, W) -> predictions (B, K, D) in sequence order; prediction i is for patch i+1."""
        mask = self.build_mask(images.shape[0], prefix_len)
        x, _ = self.forward_trunk(images, mask)
        return self.head(x, self.perm, mask)

    def training_loss(self, images: torch.Tensor, prefix_len: torch.Tensor | None = None) -> LossOutput:
        """Next-patch loss; in prefix mode only targets outside the prefix count."""
        return self.loss_from_predictions(images, self(images, prefix_len), prefix_len)

    def loss_from_predictions(
        self, images: torch.Tensor, predictions: torch.Tensor, prefix_len: torch.Tensor | None = None
    ) -> LossOutput:
        """The loss for `predictions = model(images, prefix_len)` (lets a DDP/FSDP wrapper run the forward)."""
        pred = predictions[:, :-1]  # (B, K-1, D)
        target = self.to_sequence(self.target.make(images))[:, 1:]  # raster -> sequence, shifted by one
        use = prefix_len if self.config.attention == "prefix" else None
        loss_mask = masks.loss_positions(self.config.num_patches, images.shape[0], use, images.device)
        return LossOutput(self.target.loss(pred, target, loss_mask), pred, target, loss_mask)

    def resolve_blocks(self, blocks: Sequence[int] | None) -> list[int]:
        depth = self.config.depth
        if blocks is None:
            blocks = range(max(0, depth - 6), depth)
        out = sorted({b % depth for b in blocks})
        if any(not -depth <= b < depth for b in blocks):
            raise ValueError(f"block indices {list(blocks)} out of range for depth {depth}")
        return out

    def extract_features(self, images: torch.Tensor, blocks: Sequence[int] | None = None) -> torch.Tensor:
        """Bidirectional features (B, K, d): mean of the raw outputs of `blocks` (default: last 6)."""
        keep = self.resolve_blocks(blocks)
        _, kept = self.forward_trunk(images, mask=None, keep=keep)
        feats = torch.stack(kept).mean(0)
        return feats if self.identity_order else feats[:, self.inverse]  # back to raster order

    # ---- hooks -------------------------------------------------------------------------------
    def trunk_modules(self) -> list[nn.Module]:
        return [self.preprocessor, self.blocks, self.norm]

    def param_counts(self) -> dict[str, int]:
        trunk = sum(p.numel() for m in self.trunk_modules() for p in m.parameters())
        head = sum(p.numel() for p in self.head.parameters())
        return {"trunk": trunk, "head": head, "total": trunk + head}

    def no_weight_decay(self) -> set[str]:
        """Biases and norm parameters (all 1-D); positional embeddings are fixed buffers."""
        return {n for n, p in self.named_parameters() if p.ndim <= 1 or "pos_embed" in n}

    def flops_per_image(self) -> dict[str, int]:
        """Analytic forward FLOPs (2 per multiply-add, full attention matrix) and training (3x forward)."""
        c = self.config
        k, d = c.num_patches, c.width
        trunk = linear_flops(k, c.patch_size**2 * 3, d)
        per_block = linear_flops(k, d, 3 * d) + linear_flops(k, d, d) + attention_flops(k, d)
        per_block += 2 * linear_flops(k, d, int(d * c.mlp_ratio))
        trunk += c.depth * per_block
        out_dim = self.target.out_dim
        if c.head == "none":
            head = linear_flops(k, d, out_dim)
        else:
            w, hid = c.head_width, int(c.head_width * c.head_mlp_ratio)
            blk = 2 * linear_flops(k, w, hid)
            if c.head == "transformer":
                blk += linear_flops(k, w, 4 * w) + attention_flops(k, w)
            head = linear_flops(k, d, w) + c.head_depth * blk + linear_flops(k, w, out_dim)
        fwd = trunk + head
        return {"trunk_forward": trunk, "head_forward": head, "forward": fwd, "train": 3 * fwd}


def build_model(preset: str, **overrides) -> AIM:
    """Build an AIM from a preset name in `aim_core.PRESETS` with field overrides (see `AIMConfig`)."""
    return AIM(resolve_config(preset, **overrides))
