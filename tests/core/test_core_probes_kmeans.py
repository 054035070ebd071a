"""Attentive/linear probes, and the k-means codebook (fit, assign, save/load)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from core_helpers import build, seeded_images

import aim_core


@pytest.mark.parametrize("dim,classes,heads", [(32, 10, 2), (48, 7, 3), (1536, 1000, 12)])
def test_attentive_probe_params(dim, classes, heads):
    probe = aim_core.AttentiveProbe(dim, classes, heads)
    n = sum(p.numel() for p in probe.parameters())
    assert n == 2 * dim * dim + dim * classes + dim  # no output bias by default, as in ml-aim
    assert probe.k.bias is None and probe.v.bias is None and probe.linear.bias is None
    with_bias = aim_core.AttentiveProbe(dim, classes, heads, linear_bias=True)
    assert sum(p.numel() for p in with_bias.parameters()) == n + classes
    assert not probe.bn.affine and probe.bn.weight is None and probe.bn.eps == 1e-6
    assert probe.num_heads == heads


def test_attentive_probe_by_hand():
    torch.manual_seed(0)
    b, k, d, h = 4, 5, 8, 2
    probe = aim_core.AttentiveProbe(d, 3, h).train()
    with torch.no_grad():
        probe.query.normal_()
    feats = torch.randn(b, k, d) * 3 + 1
    out = probe(feats)
    assert out.shape == (b, 3)
    # BatchNorm over all tokens of the batch (biased variance, eps 1e-6, no affine), per channel
    flat = feats.reshape(-1, d)
    x = ((flat - flat.mean(0)) / torch.sqrt(flat.var(0, unbiased=False) + 1e-6)).reshape(b, k, d)
    keys, vals = x @ probe.k.weight.T, x @ probe.v.weight.T
    hd = d // h
    pooled = []
    for head in range(h):
        cols = slice(head * hd, (head + 1) * hd)
        q = probe.query[0, 0, cols]  # the learnable query, used without projection
        w = torch.softmax(keys[:, :, cols] @ q / math.sqrt(hd), dim=1)  # (B, K)
        pooled.append((w[:, :, None] * vals[:, :, cols]).sum(1))
    expected = probe.linear(torch.cat(pooled, dim=1))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_probe_shapes_and_errors():
    feats = torch.randn(6, 16, 32)
    assert aim_core.AttentiveProbe(32, 10, 4)(feats).shape == (6, 10)
    lin = aim_core.LinearProbe(32, 5)
    assert lin(feats).shape == (6, 5)
    assert not lin.bn.affine and sum(p.numel() for p in lin.parameters()) == 32 * 5 + 5
    with pytest.raises(ValueError):
        aim_core.AttentiveProbe(30, 10, 4)


def test_probe_on_model_features():
    model = build(depth=2)
    feats = model.extract_features(seeded_images(3), blocks=[0, 1]).detach()
    probe = aim_core.AttentiveProbe(model.config.width, 4, model.config.num_heads)
    assert probe(feats).shape == (3, 4)


@pytest.mark.parametrize("kind", ["attentive", "linear"])
def test_probe_learns_separable_toy_problem(kind):
    """Class c adds a fixed direction to a few random tokens: trivially separable after pooling."""
    gen = torch.Generator().manual_seed(0)
    n, k, d, classes = 96, 8, 16, 3
    labels = torch.arange(n) % classes
    directions = torch.randn(classes, d, generator=gen) * 2
    feats = torch.randn(n, k, d, generator=gen)
    feats[:, :3] += directions[labels][:, None]
    torch.manual_seed(0)
    probe = aim_core.AttentiveProbe(d, classes, 2) if kind == "attentive" else aim_core.LinearProbe(d, classes)
    opt = torch.optim.AdamW(probe.parameters(), lr=1e-2)
    for _ in range(100):
        loss = F.cross_entropy(probe(feats), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    probe.eval()
    test = torch.randn(30, k, d, generator=gen)
    test_labels = torch.arange(30) % classes
    test[:, :3] += directions[test_labels][:, None]
    with torch.no_grad():
        assert (probe(feats).argmax(1) == labels).float().mean() == 1.0
        assert (probe(test).argmax(1) == test_labels).float().mean() >= 0.9


def test_fit_kmeans_recovers_separated_clusters():
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, -10.0]])
    labels = torch.arange(400) % 4
    x = centres[labels] + 0.1 * torch.randn(400, 3, generator=gen)
    fitted = aim_core.fit_kmeans(x, 4, iters=10, seed=0)
    assert fitted.shape == (4, 3) and fitted.dtype == torch.float32
    # each true centre has exactly one fitted centroid close to it
    dist = torch.cdist(centres, fitted)
    match = dist.argmin(1)
    assert sorted(match.tolist()) == [0, 1, 2, 3]
    assert dist.min(1).values.max() < 0.05
    # and assignment reproduces the true partition
    ids = aim_core.assign_clusters(x, fitted)
    assert torch.equal(ids, match[labels])
    # deterministic for a seed
    assert torch.equal(fitted, aim_core.fit_kmeans(x, 4, iters=10, seed=0))
    with pytest.raises(ValueError):
        aim_core.fit_kmeans(x[:3], 4)


def test_assign_clusters_by_hand_and_in_chunks():
    gen = torch.Generator().manual_seed(1)
    x, c = torch.randn(50, 6, generator=gen), torch.randn(7, 6, generator=gen)
    hand = torch.tensor([min(range(7), key=lambda j: float(((row - c[j]) ** 2).sum())) for row in x])
    assert torch.equal(aim_core.assign_clusters(x, c), hand)
    assert torch.equal(aim_core.assign_clusters(x, c, chunk=8), hand)


def test_codebook_round_trip(tmp_path):
    centroids = torch.randn(16, 48)
    path = tmp_path / "codebook.pt"
    aim_core.save_codebook(centroids, path)
    loaded = aim_core.load_codebook(path)
    assert torch.equal(loaded, centroids)
    model = build(target="kmeans")
    model.target.set_codebook(loaded)
    assert torch.equal(model.target.centroids, centroids) and bool(model.target.fitted)
    # and the codebook travels with the model's state_dict
    other = build(target="kmeans")
    other.load_state_dict(model.state_dict())
    x = seeded_images(2)
    assert torch.equal(other.target.make(x), model.target.make(x))
