"""Orders are permutations with working inverses; patchify/unpatchify round-trip."""

from __future__ import annotations

import pytest
import torch
from core_helpers import build, seeded_images

import aim_core

GRIDS = [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (7, 7), (2, 3), (3, 5), (6, 4)]


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("name", aim_core.ORDERS)
def test_order_is_permutation_with_inverse(name, grid):
    k = grid[0] * grid[1]
    o = aim_core.make_order(name, grid, seed=3)
    assert o.name == name and o.perm.dtype == torch.long and o.inverse.dtype == torch.long
    assert sorted(o.perm.tolist()) == list(range(k))
    assert torch.equal(o.perm[o.inverse], torch.arange(k)) and torch.equal(o.inverse[o.perm], torch.arange(k))
    x = torch.randn(2, k, 5)
    seq = o.to_sequence(x)
    assert torch.equal(seq[:, 3 % k], x[:, o.perm[3 % k]])  # sequence position s holds raster patch perm[s]
    assert torch.equal(o.to_raster(seq), x)


def test_raster_is_identity():
    assert torch.equal(aim_core.make_order("raster", (3, 4)).perm, torch.arange(12))


def test_spiral_explicit_and_from_centre():
    assert aim_core.make_order("spiral", (3, 3)).perm.tolist() == [4, 5, 8, 7, 6, 3, 0, 1, 2]
    for n in range(2, 8):
        perm = aim_core.make_order("spiral", (n, n)).perm.tolist()
        cells = [divmod(i, n) for i in perm]
        centre = ((n - 1) // 2, (n - 1) // 2)
        assert cells[0] == centre
        # a walk: every step moves to a 4-neighbour
        assert all(abs(a[0] - b[0]) + abs(a[1] - b[1]) == 1 for a, b in zip(cells, cells[1:]))
        # outwards: the ring (Chebyshev distance from the centre) never shrinks, up to the even-size offset
        rings = [max(abs(r - centre[0]), abs(c - centre[1])) for r, c in cells]
        assert all(b >= a - (n % 2 == 0) for a, b in zip(rings, rings[1:]))
        if n % 2:
            assert rings == sorted(rings)


def test_checkerboard_even_cells_first():
    assert aim_core.make_order("checkerboard", (3, 3)).perm.tolist() == [0, 2, 4, 6, 8, 1, 3, 5, 7]
    assert aim_core.make_order("checkerboard", (2, 4)).perm.tolist() == [0, 2, 5, 7, 1, 3, 4, 6]


def test_random_order_is_seeded_and_deterministic():
    a = aim_core.make_order("random", (4, 4), seed=0).perm
    assert torch.equal(a, aim_core.make_order("random", (4, 4), seed=0).perm)
    torch.manual_seed(123)  # the global RNG plays no part
    assert torch.equal(a, aim_core.make_order("random", (4, 4), seed=0).perm)
    assert not torch.equal(a, aim_core.make_order("random", (4, 4), seed=1).perm)
    assert not torch.equal(a, torch.arange(16))
    # the model uses exactly that permutation, one for all images
    assert torch.equal(build(order="random", order_seed=0).perm, a)
    assert torch.equal(build(order="random", order_seed=1, seed=5).perm, aim_core.make_order("random", (4, 4), 1).perm)


def test_unknown_order_raises():
    with pytest.raises(ValueError, match="order"):
        aim_core.make_order("zigzag", (2, 2))


def test_model_predictions_are_in_sequence_order():
    """Bidirectional attention is permutation-equivariant (positions attached before reordering), so a
    model with a non-raster order gives the raster model's outputs permuted into its sequence order."""
    raster = build(attention="bidirectional", order="raster", head="transformer")
    spiral = build(attention="bidirectional", order="spiral", head="transformer")
    spiral.load_state_dict(raster.state_dict())
    x = seeded_images(2)
    with torch.no_grad():
        torch.testing.assert_close(spiral(x), raster(x)[:, spiral.perm], rtol=1e-4, atol=1e-5)
        # extract_features comes back in raster order whatever the order
        torch.testing.assert_close(spiral.extract_features(x), raster.extract_features(x), rtol=1e-4, atol=1e-5)
        # and targets are reordered alike: target s is the raster patch perm[s + 1]
        out = spiral.training_loss(x)
        assert torch.equal(out.target, spiral.target.make(x)[:, spiral.perm[1:]])


@pytest.mark.parametrize("h,w,p", [(16, 16, 4), (12, 20, 4), (14, 28, 7), (6, 9, 3), (8, 8, 8), (5, 5, 1)])
def test_patchify_round_trip(h, w, p):
    x = torch.randn(2, 3, h, w)
    patches = aim_core.patchify(x, p)
    gh, gw = h // p, w // p
    assert patches.shape == (2, gh * gw, p * p * 3)
    # patch k is the raster cell (k // gw, k % gw), flattened as (row, col, channel)
    k = gh * gw - 1
    r, c = divmod(k, gw)
    assert torch.equal(
        patches[:, k], x[:, :, r * p : (r + 1) * p, c * p : (c + 1) * p].permute(0, 2, 3, 1).reshape(2, -1)
    )
    assert torch.equal(aim_core.unpatchify(patches, p, (gh, gw)), x)


@pytest.mark.parametrize("h,w,p", [(16, 15, 4), (10, 12, 4), (7, 7, 2)])
def test_patchify_rejects_non_divisible(h, w, p):
    with pytest.raises(ValueError, match="divisible"):
        aim_core.patchify(torch.zeros(1, 3, h, w), p)


def test_unpatchify_rejects_wrong_grid():
    with pytest.raises(ValueError):
        aim_core.unpatchify(torch.zeros(1, 6, 48), 4, (2, 2))
