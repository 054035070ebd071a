"""Apple's ml-aim (v1) weight layout <-> this project's, and the preset that fits a set of weights.

Apple's `aim-v1/aim/v1/torch` names (`aim_600M` ... `aim_7B`), d = width, L = depth, p = patch:

    preprocessor.patchifier.proj.{weight (d, 3, p, p), bias (d,)}   <- preprocessor.patch_embed
    preprocessor.patchifier.norm.{weight, bias} (d,)                  <- preprocessor.norm
    trunk.blocks.N.norm_1 / norm_2.{weight, bias} (d,)                <- blocks.N.norm1 / norm2
    trunk.blocks.N.attn.qkv.weight (3d, d), attn.proj.weight (d, d)   <- blocks.N.attn.qkv / proj
    trunk.blocks.N.mlp.fc1.weight (4d, d), mlp.fc2.weight (d, 4d)     <- blocks.N.mlp.fc1 / fc2
    trunk.post_trunk_norm.{weight, bias} (d,)                         <- norm
    head.{k.weight, v.weight (d, d), cls_token (1, 1, d), linear.weight (classes, d),
          bn.running_mean, bn.running_var, bn.num_batches_tracked}    <- AttentiveProbe (query = cls_token)

Every tensor keeps its shape and layout (no transposes): the fused qkv splits as (3, heads, head_dim) in
both, linear layers and the attention projection have no bias in both, the sin-cos positions are computed
(no tensor in either state dict). LayerNorm eps must be 1e-6 (`AIMConfig.norm_eps`) to compute what
Apple's modules compute. Heads, image size and the pre-training head are not in Apple's weights: heads
and image size come from the preset; the pre-training head has no place in Apple's layout.
"""

from __future__ import annotations

import dataclasses
import re

import torch

from aim_core.presets import PRESETS, AIMConfig

__all__ = [
    "to_ml_aim_key",
    "from_ml_aim_key",
    "trunk_to_ml_aim",
    "trunk_from_ml_aim",
    "probe_to_ml_aim",
    "probe_from_ml_aim",
    "weight_shape",
    "infer_preset",
    "check_preset",
    "is_trunk_key",
    "config_fields",
    "probe_key_to_ml_aim",
]

# (ours, Apple's) name prefixes; block keys are handled by _BLOCK below.
_PREFIXES = (
    ("preprocessor.patch_embed.", "preprocessor.patchifier.proj."),
    ("preprocessor.norm.", "preprocessor.patchifier.norm."),
    ("norm.", "trunk.post_trunk_norm."),
)
# (ours, Apple's) module names inside a block
_BLOCK_PARTS = (
    ("norm1", "norm_1"),
    ("norm2", "norm_2"),
    ("attn.qkv", "attn.qkv"),
    ("attn.proj", "attn.proj"),
    ("mlp.fc1", "mlp.fc1"),
    ("mlp.fc2", "mlp.fc2"),
)
_OURS_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)\.(weight|bias)$")
_APPLE_BLOCK = re.compile(r"^trunk\.blocks\.(\d+)\.(.+)\.(weight|bias)$")
# (ours, Apple's) AttentiveProbe <-> AttentionPoolingClassifier, under "head." on Apple's side
_PROBE = (
    ("query", "cls_token"),
    ("k.weight", "k.weight"),
    ("v.weight", "v.weight"),
    ("linear.weight", "linear.weight"),
    ("linear.bias", "linear.bias"),
    ("bn.running_mean", "bn.running_mean"),
    ("bn.running_var", "bn.running_var"),
    ("bn.num_batches_tracked", "bn.num_batches_tracked"),
)


def _rename(key: str, pairs, block: re.Pattern, block_prefix: str, src: int) -> str | None:
    """`key` renamed from side `src` (0 ours, 1 Apple's) to the other, None if it has no counterpart."""
    m = block.match(key)
    if m:
        part = dict((p[src], p[1 - src]) for p in _BLOCK_PARTS).get(m.group(2))
        return None if part is None else f"{block_prefix}{m.group(1)}.{part}.{m.group(3)}"
    for pair in pairs:
        if key.startswith(pair[src]):
            return pair[1 - src] + key[len(pair[src]) :]
    return None


def to_ml_aim_key(key: str) -> str | None:
    """Our trunk key -> Apple's (`blocks.3.norm1.weight` -> `trunk.blocks.3.norm_1.weight`); None for keys
    with no place in Apple's layout (the pre-training head `head.*`, the target's buffers `target.*`)."""
    return _rename(key, _PREFIXES, _OURS_BLOCK, "trunk.blocks.", 0)


def from_ml_aim_key(key: str) -> str | None:
    """Apple's backbone key -> ours; None for a key this project has no module for."""
    return _rename(key, _PREFIXES, _APPLE_BLOCK, "blocks.", 1)


def is_trunk_key(key: str) -> bool:
    """Whether one of our model keys belongs to the trunk (preprocessor, blocks, final norm)."""
    return to_ml_aim_key(key) is not None


def trunk_to_ml_aim(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Our model state dict -> (Apple's backbone state dict, our keys left out: head and target)."""
    out, left = {}, []
    for key, value in state.items():
        new = to_ml_aim_key(key)
        if new is None:
            left.append(key)
        else:
            out[new] = value
    return out, left


def trunk_from_ml_aim(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Apple's backbone keys (`preprocessor.*`, `trunk.*`) -> our trunk state dict; `head.*` is ignored
    (see `probe_from_ml_aim`). ValueError naming the first key without a counterpart (e.g. an absolute
    `preprocessor.pos_embed` or a `cls_token`, which AIM v1 does not use)."""
    out = {}
    for key, value in state.items():
        if key.startswith("head."):
            continue
        new = from_ml_aim_key(key)
        if new is None:
            raise ValueError(f"{key}: no counterpart in this project's AIM (shape {tuple(value.shape)})")
        out[new] = value
    return out


def probe_key_to_ml_aim(key: str) -> str:
    """Our `AttentiveProbe` key -> Apple's (`query` -> `head.cls_token`); KeyError for an unknown key."""
    return "head." + dict(_PROBE)[key]


def probe_to_ml_aim(probe_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our `AttentiveProbe` state dict -> Apple's `head.*` (AttentionPoolingClassifier) keys."""
    names = dict(_PROBE)
    unknown = sorted(set(probe_state) - set(names))
    if unknown:
        raise ValueError(f"attentive probe: unexpected key(s) {', '.join(unknown)}")
    return {f"head.{names[k]}": v for k, v in probe_state.items()}


def probe_from_ml_aim(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """Apple's `head.*` keys -> our `AttentiveProbe` state dict; None when `state` has no head.

    ValueError for a head with several queries (ours has one, as every published head)."""
    names = {apple: ours for ours, apple in _PROBE}
    head = {k[len("head.") :]: v for k, v in state.items() if k.startswith("head.")}
    if not head:
        return None
    unknown = sorted(set(head) - set(names))
    if unknown:
        raise ValueError(f"head.{unknown[0]}: no counterpart in the attentive probe")
    if "cls_token" in head and head["cls_token"].shape[1] != 1:
        raise ValueError(f"head.cls_token: {head['cls_token'].shape[1]} queries; the attentive probe has one")
    return {names[k]: v for k, v in head.items()}


_SHAPE_FIELDS = ("width", "depth", "patch_size", "mlp_ratio")


def weight_shape(trunk: dict[str, torch.Tensor]) -> dict[str, float]:
    """What our trunk state dict fixes: width, depth, patch_size, mlp_ratio (heads are not in the weights:
    the fused qkv is (3d, d) whatever the head count). ValueError naming a missing or odd tensor."""
    proj = trunk.get("preprocessor.patch_embed.weight")
    if proj is None:
        raise ValueError("preprocessor.patchifier.proj.weight: missing (not an AIM backbone?)")
    if proj.ndim != 4 or proj.shape[1] != 3 or proj.shape[2] != proj.shape[3]:
        raise ValueError(f"preprocessor.patchifier.proj.weight: shape {tuple(proj.shape)}, expected (d, 3, p, p)")
    blocks = {int(m.group(1)) for k in trunk if (m := _OURS_BLOCK.match(k))}
    if not blocks or blocks != set(range(len(blocks))):
        raise ValueError(f"trunk.blocks: indices {sorted(blocks)} are not 0..N-1")
    fc1 = trunk.get("blocks.0.mlp.fc1.weight")
    if fc1 is None:
        raise ValueError("trunk.blocks.0.mlp.fc1.weight: missing")
    width = int(proj.shape[0])
    return {"width": width, "depth": len(blocks), "patch_size": int(proj.shape[2]), "mlp_ratio": fc1.shape[0] / width}


def _differences(shape: dict[str, float], cfg: AIMConfig) -> list[str]:
    return [f"{f} {getattr(cfg, f)} (weights: {shape[f]})" for f in _SHAPE_FIELDS if getattr(cfg, f) != shape[f]]


def check_preset(shape: dict[str, float], preset: str) -> AIMConfig:
    """The preset's config if its width, depth, patch and MLP ratio are those of the weights, else
    ValueError naming each field that differs."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    diff = _differences(shape, PRESETS[preset])
    if diff:
        raise ValueError(f"preset {preset} does not fit these weights: {'; '.join(diff)}")
    return PRESETS[preset]


def infer_preset(shape: dict[str, float]) -> str:
    """The one preset in `aim_core.PRESETS` with these width, depth, patch and MLP ratio. ValueError when
    none fits (naming the nearest preset and what differs) or several do (naming them)."""
    fits = [name for name, cfg in PRESETS.items() if not _differences(shape, cfg)]
    if len(fits) == 1:
        return fits[0]
    dims = ", ".join(f"{f} {shape[f]}" for f in _SHAPE_FIELDS)
    if fits:
        raise ValueError(f"weights ({dims}) fit several presets ({', '.join(fits)}); choose one with --preset")
    nearest = min(PRESETS, key=lambda name: len(_differences(shape, PRESETS[name])))
    raise ValueError(
        f"no preset in aim_core.PRESETS fits these weights ({dims}); nearest {nearest} has "
        f"{'; '.join(_differences(shape, PRESETS[nearest]))}"
    )


def config_fields(cfg: AIMConfig) -> dict:
    """The config as a plain dict (for checkpoint metadata)."""
    return dataclasses.asdict(cfg)
