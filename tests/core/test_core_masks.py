"""Attention-mask semantics, checked by perturbing one input patch and seeing which outputs move."""

from __future__ import annotations

import pytest
import torch
from core_helpers import build, perturb_patch, seeded_images

import aim_core

CHANGED = 1e-4  # an output "depends" on a patch if it moves by more than this
SAME = 1e-6  # ... and is "independent" of it if it moves by less than this


def dependency(model: aim_core.AIM, images: torch.Tensor, prefix_len=None, fn=None) -> torch.Tensor:
    """dep[b, i, j]: max |change| of output i (sequence order) when the patch at sequence position j moves."""
    fn = fn or (lambda x: model(x, prefix_len))
    perm = model.perm.tolist()
    with torch.no_grad():
        base = fn(images)
        cols = []
        for j in range(len(perm)):
            out = fn(perturb_patch(images, perm[j], model.config.patch_size, seed=j + 1))
            cols.append((out - base).abs().amax(-1))  # (B, K)
    return torch.stack(cols, dim=-1)  # (B, K_out, K_in)


def assert_pattern(dep: torch.Tensor, allowed: torch.Tensor) -> None:
    """Outputs move where `allowed`, and stay put (to float precision) everywhere else."""
    allowed = allowed.expand_as(dep)
    if (~allowed).any():
        assert dep[~allowed].max().item() < SAME, "an output saw a patch it must not see"
    assert dep[allowed].min().item() > CHANGED, "an output ignores a patch it should see"


def causal_pattern(k: int) -> torch.Tensor:
    i = torch.arange(k)
    return i[None, :] <= i[:, None]  # [q, key]


def prefix_pattern(k: int, s: int) -> torch.Tensor:
    return torch.tensor([[key < s or key <= q for key in range(k)] for q in range(k)])


@pytest.mark.parametrize("order", ["raster", "spiral", "checkerboard", "random"])
@pytest.mark.parametrize("head", ["mlp", "transformer", "none"])
def test_causal_outputs_ignore_later_patches(order, head):
    model = build(attention="causal", order=order, head=head)
    dep = dependency(model, seeded_images(2))
    assert_pattern(dep, causal_pattern(model.config.num_patches))


def test_causal_ignores_prefix_len_argument():
    model = build(attention="causal", order="spiral")
    x = seeded_images(2)
    with torch.no_grad():
        assert torch.equal(model(x), model(x, torch.tensor([5, 9])))


@pytest.mark.parametrize("order", ["raster", "spiral"])
@pytest.mark.parametrize("head", ["mlp", "transformer"])
def test_prefix_mask_per_image(order, head):
    """Prefix outputs see exactly the whole prefix; later outputs see prefix + earlier + themselves."""
    model = build(attention="prefix", order=order, head=head)
    k = model.config.num_patches
    s = torch.tensor([3, 11])  # different prefix lengths per image: masks must not be mixed up
    dep = dependency(model, seeded_images(2), prefix_len=s)
    for b in range(2):
        assert_pattern(dep[b], prefix_pattern(k, int(s[b])))


def test_prefix_len_none_is_causal():
    causal = build(attention="causal", order="random")
    prefix = build(attention="prefix", order="random")
    prefix.load_state_dict(causal.state_dict())
    x = seeded_images(2)
    dep = dependency(prefix, x, prefix_len=None)
    assert_pattern(dep, causal_pattern(prefix.config.num_patches))
    with torch.no_grad():
        torch.testing.assert_close(prefix(x), causal(x), rtol=0, atol=1e-6)
        # a prefix of one patch is the causal mask too (key 0 <= every query)
        torch.testing.assert_close(prefix(x, torch.tensor([1, 1])), causal(x), rtol=0, atol=1e-6)
        # ... and a longer prefix is not
        assert not torch.allclose(prefix(x, torch.tensor([6, 6])), causal(x), atol=1e-4)


@pytest.mark.parametrize("attention", ["causal", "prefix", "bidirectional"])
def test_extract_features_are_bidirectional(attention):
    """Whatever the pre-training mask, extract_features (raster order) depends on every patch."""
    model = build(attention=attention, order="spiral")
    k = model.config.num_patches
    dep = dependency(model, seeded_images(2), fn=lambda x: model.extract_features(x))
    # outputs come back in raster order, inputs are indexed by sequence position: all must move anyway
    assert_pattern(dep, torch.ones(k, k, dtype=torch.bool))


def test_bidirectional_mode_forward_sees_everything():
    model = build(attention="bidirectional", head="transformer")
    k = model.config.num_patches
    assert_pattern(dependency(model, seeded_images(1)), torch.ones(k, k, dtype=torch.bool))


def test_may_attend_matches_definition():
    k = 6
    s = torch.tensor([1, 4, 5])
    m = aim_core.may_attend("prefix", k, batch=3, prefix_len=s)
    assert m.shape == (3, 1, k, k) and m.dtype == torch.bool
    for b in range(3):
        assert torch.equal(m[b, 0], prefix_pattern(k, int(s[b])))
    c = aim_core.may_attend("causal", k, batch=2)
    assert c.shape == (2, 1, k, k) and torch.equal(c[1, 0], causal_pattern(k))
    assert torch.equal(aim_core.may_attend("prefix", k, batch=2, prefix_len=None), c)
    assert aim_core.may_attend("bidirectional", k) is None
    with pytest.raises(ValueError, match="attention"):
        aim_core.may_attend("sideways", k)


def test_sample_prefix_len_range_and_seed():
    k = 16
    s = aim_core.sample_prefix_len(4000, k, torch.Generator().manual_seed(0))
    assert s.dtype == torch.long and s.shape == (4000,)
    assert int(s.min()) == 1 and int(s.max()) == k - 1  # uniform over [1, K-1], both ends reached
    counts = torch.bincount(s, minlength=k)[1:].float()
    assert counts.min() > 0.6 * counts.mean()  # roughly uniform
    again = aim_core.sample_prefix_len(4000, k, torch.Generator().manual_seed(0))
    assert torch.equal(s, again)
    with pytest.raises(ValueError):
        aim_core.sample_prefix_len(2, 1)
    assert build(attention="prefix").sample_prefix_len(3).shape == (3,)
    assert build(attention="causal").sample_prefix_len(3) is None
