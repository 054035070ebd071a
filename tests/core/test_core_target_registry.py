"""Each registered target owns its fitting, the state that fitting saves and its predictions as pixels."""

from __future__ import annotations

import pytest
import torch

import aim_core
from aim_core.patches import patchify


@pytest.mark.parametrize("name", aim_core.TARGETS)
def test_registered_target_fits_round_trips_and_shows_pixels(name):
    assert tuple(aim_core.TARGET_TYPES) == aim_core.TARGETS
    torch.manual_seed(0)
    images = torch.randn(8, 3, 16, 16)
    tgt = aim_core.build_target(name, 4, num_clusters=6, dvae_vocab=6)
    assert type(tgt) is aim_core.TARGET_TYPES[name]
    tgt.fit(images, steps=3, seed=0)
    state = tgt.fit_state()
    assert bool(state) == tgt.needs_fit
    fresh = aim_core.build_target(name, 4, num_clusters=6, dvae_vocab=6)
    fresh.load_fit_state(state)
    assert torch.equal(fresh.make(images), tgt.make(images))
    order = aim_core.make_order("spiral", (4, 4))
    pred = torch.randn(8, 15, tgt.out_dim)
    true_seq = patchify(images, 4)[:, order.perm]
    out = tgt.predicted_patches(pred, true_seq, order.perm, order.inverse, (4, 4))
    assert out.shape == (8, 15, 48) and torch.isfinite(out).all()
