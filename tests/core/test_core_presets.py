"""Presets: the paper's sizes (built on the meta device) and configuration errors that name the field."""

from __future__ import annotations

import pytest
import torch

import aim_core

PAPER = {  # preset: (width, depth, heads, 12*d^2*L in billions) from the reference table
    "aim-600m": (1536, 24, 12, 0.68),
    "aim-1b": (2048, 24, 16, 1.21),
    "aim-3b": (3072, 24, 24, 2.72),
    "aim-7b": (4096, 32, 32, 6.44),
}


def meta_model(preset: str, **overrides) -> aim_core.AIM:
    with torch.device("meta"):
        return aim_core.build_model(preset, **overrides)


@pytest.mark.parametrize("preset", PAPER)
def test_paper_dims(preset):
    width, depth, heads, _ = PAPER[preset]
    cfg = aim_core.PRESETS[preset]
    assert (cfg.width, cfg.depth, cfg.num_heads) == (width, depth, heads)
    assert cfg.width // cfg.num_heads == 128  # head dim 128
    assert (cfg.img_size, cfg.patch_size, cfg.num_patches, cfg.mlp_ratio) == (224, 14, 256, 4.0)
    assert (cfg.head, cfg.head_width, cfg.head_depth, cfg.head_mlp_ratio) == ("mlp", 2048, 12, 4.0)
    assert (cfg.target, cfg.order, cfg.attention) == ("norm_pixel", "raster", "prefix")


@pytest.mark.parametrize("preset", PAPER)
def test_paper_trunk_params_on_meta(preset):
    width, depth, _, billions = PAPER[preset]
    model = meta_model(preset)
    assert all(p.is_meta for p in model.parameters())  # never materialised
    ideal = 12 * width**2 * depth
    assert ideal / 1e9 == pytest.approx(billions, abs=0.005)
    counts = model.param_counts()
    assert counts["trunk"] == pytest.approx(ideal, rel=0.02)
    assert counts["total"] == counts["trunk"] + counts["head"]
    # param_counts agrees with the modules themselves
    assert counts["total"] == sum(p.numel() for n, p in model.named_parameters() if not n.startswith("target."))


def test_paper_mlp_head_size_on_meta():
    counts = meta_model("aim-600m").param_counts()
    assert counts["head"] == pytest.approx(0.40e9, abs=0.02e9)
    # the head is defined by the target: no head is just one linear layer d -> 14*14*3
    assert meta_model("aim-600m", head="none").param_counts()["head"] == 1536 * 588


@pytest.mark.parametrize("preset", PAPER)
def test_paper_forward_shape_on_meta(preset):
    model = meta_model(preset)
    with torch.device("meta"):
        x = torch.empty(2, 3, 224, 224)
        s = torch.tensor([5, 100])
    assert model(x, s).shape == (2, 256, 588)


@pytest.mark.parametrize("preset", ["aim-test", "aim-tiny", "aim-small"])
def test_small_presets_are_small(preset):
    cfg = aim_core.PRESETS[preset]
    assert cfg.img_size <= 32 and cfg.width <= 384
    assert cfg.num_clusters <= 512 and cfg.dvae_vocab <= 512


def test_overrides_apply():
    cfg = aim_core.resolve_config(
        "aim-600m", width=64, depth=1, num_heads=4, patch_size=16, img_size=32, head_width=32, head_depth=3
    )
    assert (cfg.width, cfg.depth, cfg.num_heads, cfg.patch_size, cfg.img_size, cfg.head_width, cfg.head_depth) == (
        64,
        1,
        4,
        16,
        32,
        32,
        3,
    )
    assert aim_core.PRESETS["aim-600m"].width == 1536  # the registry is not mutated
    model = aim_core.build_model("aim-test", depth=3, head_depth=2)
    assert len(model.blocks) == 3 and len(model.head.blocks) == 2


@pytest.mark.parametrize(
    "overrides,field",
    [
        (dict(num_heads=5), "num_heads"),
        (dict(img_size=18), "img_size"),
        (dict(patch_size=3), "img_size"),
        (dict(width=30, num_heads=2), "width"),
        (dict(depth=0), "depth"),
        (dict(head="deep"), "head"),
        (dict(head="transformer", head_num_heads=3), "head_num_heads"),
        (dict(target="sift"), "target"),
        (dict(order="zigzag"), "order"),
        (dict(attention="sideways"), "attention"),
        (dict(attn_impl="fast"), "attn_impl"),
    ],
)
def test_invalid_config_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        aim_core.build_model("aim-test", **overrides)


def test_unknown_preset_and_field():
    with pytest.raises(ValueError, match="aim-9b"):
        aim_core.build_model("aim-9b")
    with pytest.raises(ValueError, match="widht"):
        aim_core.build_model("aim-test", widht=64)
