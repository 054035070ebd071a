"""Model configuration and the one preset registry (paper sizes + small CPU presets)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from aim_core.flex import ATTN_IMPLS
from aim_core.heads import HEADS
from aim_core.masks import ATTENTION_MODES
from aim_core.orders import ORDERS
from aim_core.targets import TARGETS

__all__ = ["AIMConfig", "PRESETS", "resolve_config"]


@dataclass(frozen=True)
class AIMConfig:
    """Everything that fixes an AIM model's shape and objective."""

    img_size: int = 224
    patch_size: int = 14
    width: int = 1536
    depth: int = 24
    num_heads: int = 12
    mlp_ratio: float = 4.0
    # eps of every LayerNorm (patch-embed norm, trunk blocks, final norm, head). 1e-6 as in Apple's ml-aim
    # (`LayerNorm = partial(nn.LayerNorm, eps=1e-6)`), so its published weights load unchanged. A deliberate
    # change from torch's default 1e-5, used here before: set 1e-5 to reproduce checkpoints trained then.
    norm_eps: float = 1e-6
    head: str = "mlp"  # one of aim_core.HEADS
    head_width: int = 2048
    head_depth: int = 12
    head_mlp_ratio: float = 4.0
    head_num_heads: int = 16  # transformer head only
    target: str = "norm_pixel"  # one of aim_core.TARGETS
    num_clusters: int = 512  # kmeans target (paper's value unknown)
    dvae_vocab: int = 512  # dvae target (paper's value unknown)
    norm_pix_eps: float = 1e-6
    order: str = "raster"  # one of aim_core.ORDERS
    order_seed: int = 0
    attention: str = "prefix"  # one of aim_core.ATTENTION_MODES
    attn_impl: str = "auto"  # one of aim_core.ATTN_IMPLS

    def __post_init__(self) -> None:
        # Every AIMConfig is valid from birth (`AIMConfig(...)`, `dataclasses.replace(...)`): the checks run here,
        # not only when a caller remembers `validate()`. It is frozen, so there is nothing to mutate afterwards;
        # a variant is `dataclasses.replace(cfg, field=value)`, which builds (and validates) a new one.
        self.validate()

    @property
    def grid(self) -> tuple[int, int]:
        return (self.img_size // self.patch_size, self.img_size // self.patch_size)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def validate(self) -> AIMConfig:
        """Raise ValueError("field: why") on the first impossible setting; returns self (already run on build)."""
        checks = [
            (
                self.img_size % self.patch_size == 0,
                "img_size",
                f"{self.img_size} is not divisible by patch_size {self.patch_size}",
            ),
            (self.width % self.num_heads == 0, "num_heads", f"{self.num_heads} does not divide width {self.width}"),
            (self.width % 4 == 0, "width", "must be divisible by 4 (2D sin-cos embedding)"),
            (self.depth >= 1, "depth", "must be >= 1"),
            (self.norm_eps > 0, "norm_eps", f"must be > 0, got {self.norm_eps}"),
            (self.head in HEADS, "head", f"unknown head {self.head!r}; choose one of {', '.join(HEADS)}"),
            (self.head == "none" or self.head_width % 4 == 0, "head_width", "must be divisible by 4"),
            (
                self.head != "transformer" or self.head_width % self.head_num_heads == 0,
                "head_num_heads",
                f"{self.head_num_heads} does not divide head_width {self.head_width}",
            ),
            (self.target in TARGETS, "target", f"unknown target {self.target!r}; choose one of {', '.join(TARGETS)}"),
            (self.order in ORDERS, "order", f"unknown order {self.order!r}; choose one of {', '.join(ORDERS)}"),
            (
                self.attention in ATTENTION_MODES,
                "attention",
                f"unknown attention mode {self.attention!r}; choose one of {', '.join(ATTENTION_MODES)}",
            ),
            (
                self.attn_impl in ATTN_IMPLS,
                "attn_impl",
                f"unknown attention implementation {self.attn_impl!r}; choose one of {', '.join(ATTN_IMPLS)}",
            ),
            (self.attention != "prefix" or self.num_patches >= 2, "attention", "prefix needs at least 2 patches"),
        ]
        for ok, field, msg in checks:
            if not ok:
                raise ValueError(f"{field}: {msg}")
        return self


_PAPER_HEAD = dict(head="mlp", head_width=2048, head_depth=12)

PRESETS: dict[str, AIMConfig] = {
    # The paper's sizes (224 px, patch 14, head dim 128, MLP head 12 x 2048).
    "aim-600m": AIMConfig(width=1536, depth=24, num_heads=12, **_PAPER_HEAD),
    "aim-1b": AIMConfig(width=2048, depth=24, num_heads=16, **_PAPER_HEAD),
    "aim-3b": AIMConfig(width=3072, depth=24, num_heads=24, **_PAPER_HEAD),
    "aim-7b": AIMConfig(width=4096, depth=32, num_heads=32, **_PAPER_HEAD),
    # Small presets for CPU work, patch 4: aim-test 16 px -> 16 patches (tests); aim-tiny and aim-small
    # 32 px (CIFAR-10) -> 64 patches.
    "aim-test": AIMConfig(
        img_size=16,
        patch_size=4,
        width=32,
        depth=2,
        num_heads=2,
        head_width=32,
        head_depth=1,
        head_num_heads=2,
        num_clusters=16,
        dvae_vocab=16,
    ),
    "aim-tiny": AIMConfig(
        img_size=32,
        patch_size=4,
        width=192,
        depth=6,
        num_heads=3,
        head_width=256,
        head_depth=2,
        head_num_heads=4,
        num_clusters=256,
        dvae_vocab=256,
    ),
    "aim-small": AIMConfig(
        img_size=32, patch_size=4, width=384, depth=12, num_heads=6, head_width=512, head_depth=4, head_num_heads=8
    ),
}


def resolve_config(preset: str, **overrides) -> AIMConfig:
    """A preset with overrides applied; unknown presets or fields raise naming the culprit."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(AIMConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown model field(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
    return dataclasses.replace(PRESETS[preset], **overrides)  # validated by AIMConfig.__post_init__
