"""Apple's ml-aim v1 layout: the key mapping round-trips, our weights compute in Apple's modules what they
compute here (features and probe logits), presets are inferred from shapes, and LayerNorm eps follows the config."""

from __future__ import annotations

import pytest
import torch
from core_helpers import build, seeded_images
from ml_aim_reference import apple_aim
from torch import nn

import aim_core
from aim_core import ml_aim


def _randomise_norms(*modules: nn.Module) -> None:
    """Non-trivial LayerNorm parameters and BatchNorm statistics, so a misplaced or mis-named one shows."""
    with torch.no_grad():
        for module in modules:
            for m in module.modules():
                if isinstance(m, nn.LayerNorm):
                    m.weight.normal_(1.0, 0.3)
                    m.bias.normal_(0.0, 0.3)
                elif isinstance(m, nn.BatchNorm1d):
                    m.running_mean.normal_(0.0, 0.5)
                    m.running_var.uniform_(0.5, 2.0)


def _probe(model: aim_core.AIM, classes: int = 5) -> aim_core.AttentiveProbe:
    probe = aim_core.AttentiveProbe(model.config.width, classes, model.config.num_heads)
    with torch.no_grad():
        probe.query.normal_()
    return probe.eval()


def test_mapping_round_trips_to_identical_tensors():
    model = build(depth=3)
    ours = model.state_dict()
    apple, left = ml_aim.trunk_to_ml_aim(ours)
    assert all(k.startswith(("head.", "target.")) for k in left) and left  # only the pre-training head/target
    assert all(k.startswith(("preprocessor.patchifier.", "trunk.blocks.", "trunk.post_trunk_norm.")) for k in apple)
    back = ml_aim.trunk_from_ml_aim(apple)
    assert set(back) == {k for k in ours if ml_aim.is_trunk_key(k)}
    assert all(torch.equal(back[k], ours[k]) for k in back)
    probe = _probe(model).state_dict()
    probe_back = ml_aim.probe_from_ml_aim(ml_aim.probe_to_ml_aim(probe))
    assert set(probe_back) == set(probe) and all(torch.equal(probe_back[k], probe[k]) for k in probe)


def test_key_names():
    assert ml_aim.to_ml_aim_key("blocks.11.norm1.weight") == "trunk.blocks.11.norm_1.weight"
    assert ml_aim.to_ml_aim_key("blocks.0.attn.qkv.weight") == "trunk.blocks.0.attn.qkv.weight"
    assert ml_aim.to_ml_aim_key("preprocessor.patch_embed.bias") == "preprocessor.patchifier.proj.bias"
    assert ml_aim.to_ml_aim_key("norm.weight") == "trunk.post_trunk_norm.weight"
    assert ml_aim.to_ml_aim_key("head.blocks.0.norm1.weight") is None
    assert ml_aim.probe_key_to_ml_aim("query") == "head.cls_token"


def _loaded_reference(model: aim_core.AIM, probe: aim_core.AttentiveProbe, blocks: list[int]):
    c = model.config
    ref = apple_aim(c.patch_size, c.width, c.depth, c.num_heads, probe.linear.out_features)
    ref.trunk.post_transformer_layer.layers = tuple(blocks)
    apple, _ = ml_aim.trunk_to_ml_aim(model.state_dict())
    ref.load_state_dict({**apple, **ml_aim.probe_to_ml_aim(probe.state_dict())}, strict=True)  # every key, exactly
    return ref.eval()


@pytest.mark.parametrize("preset,blocks", [("aim-test", [0, 1, 2]), ("aim-test", [1]), ("aim-tiny", [1, 2])])
def test_features_and_probe_logits_match_apples_modules(preset, blocks):
    model = build(preset=preset, depth=3)
    probe = _probe(model)
    _randomise_norms(model, probe)
    ref = _loaded_reference(model, probe, blocks)
    x = seeded_images(4, model.config.img_size)
    with torch.no_grad():
        logits_ref, block_outputs = ref(x)
        final, kept = model.forward_trunk(x, keep=range(3))
        feats = model.extract_features(x, blocks)
        for ours, theirs in zip(kept, block_outputs):
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(final, ref.trunk.post_trunk_norm(block_outputs[-1]), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(probe(feats), logits_ref, rtol=1e-5, atol=1e-5)


def test_norm_eps_reaches_every_layernorm():
    for head in aim_core.HEADS:
        for eps in (1e-6, 1e-5):
            model = build(head=head, norm_eps=eps)
            norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
            assert len(norms) >= 2 * model.config.depth + 2 and all(m.eps == eps for m in norms)
    assert aim_core.PRESETS["aim-600m"].norm_eps == 1e-6  # ml-aim's value (torch's default is 1e-5)
    with pytest.raises(ValueError, match="norm_eps"):
        build(norm_eps=0.0)


def test_eps_matters_for_matching_apple():
    """With torch's default eps 1e-5 the trunk drifts from Apple's modules: the field is not cosmetic."""
    model = build(depth=3, norm_eps=1e-5)
    probe = _probe(model)
    ref = _loaded_reference(model, probe, [2])
    x = seeded_images(2) * 1e-3  # small activations: where eps counts
    with torch.no_grad():
        _, kept = model.forward_trunk(x, keep=[2])
        assert (kept[0] - ref(x)[1][2]).abs().max() > 1e-4


@pytest.mark.parametrize("preset", ["aim-600m", "aim-1b", "aim-3b", "aim-7b", "aim-test", "aim-tiny"])
def test_preset_inferred_from_shapes_on_meta(preset):
    with torch.device("meta"):
        model = aim_core.build_model(preset)
    trunk = {k: v for k, v in model.state_dict().items() if ml_aim.is_trunk_key(k)}
    assert ml_aim.infer_preset(ml_aim.weight_shape(trunk)) == preset
    assert ml_aim.check_preset(ml_aim.weight_shape(trunk), preset) is aim_core.PRESETS[preset]


def test_preset_errors_name_what_did_not_match():
    shape = {"width": 1024, "depth": 24, "patch_size": 14, "mlp_ratio": 4.0}
    with pytest.raises(ValueError, match=r"no preset .*width 1024.*nearest aim-\w+ has width"):
        ml_aim.infer_preset(shape)
    with pytest.raises(ValueError, match=r"preset aim-7b does not fit.*width 4096 \(weights: 1536\).*depth 32"):
        ml_aim.check_preset({"width": 1536, "depth": 24, "patch_size": 14, "mlp_ratio": 4.0}, "aim-7b")
    with pytest.raises(ValueError, match="unknown preset 'aim-9b'"):
        ml_aim.check_preset(shape, "aim-9b")


def test_unknown_apple_keys_are_named():
    apple, _ = ml_aim.trunk_to_ml_aim(build().state_dict())
    with pytest.raises(ValueError, match="preprocessor.pos_embed"):
        ml_aim.trunk_from_ml_aim({**apple, "preprocessor.pos_embed": torch.zeros(1, 16, 32)})
    with pytest.raises(ValueError, match="head.cls_token: 2 queries"):
        ml_aim.probe_from_ml_aim({"head.cls_token": torch.zeros(1, 2, 32)})
    with pytest.raises(ValueError, match="proj.weight: missing"):
        ml_aim.weight_shape({})
    assert ml_aim.probe_from_ml_aim(apple) is None
