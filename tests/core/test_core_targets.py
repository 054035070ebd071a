"""Targets against hand-computed values, and the loss ignoring prefix positions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from core_helpers import build, fit_target, seeded_images

import aim_core

P = 2  # patch size of the hand examples: a 3x4x6 image is a 2x3 grid of 12-value patches


def hand_patches(img: torch.Tensor, p: int) -> list[list[float]]:
    """Raster-ordered patches of one (C, H, W) image, each flattened as (row, col, channel) like MAE."""
    c, h, w = img.shape
    return [
        [float(img[ch, r * p + i, q * p + j]) for i in range(p) for j in range(p) for ch in range(c)]
        for r in range(h // p)
        for q in range(w // p)
    ]


def hand_normalise(v: list[float], eps: float) -> list[float]:
    n = len(v)
    mean = sum(v) / n
    var = sum((x - mean) ** 2 for x in v) / (n - 1)  # unbiased
    return [(x - mean) / math.sqrt(var + eps) for x in v]


def hand_mse(pred: torch.Tensor, target: list[list[float]], use: list[bool]) -> float:
    per = [sum((float(pred[i, j]) - t) ** 2 for j, t in enumerate(row)) / len(row) for i, row in enumerate(target)]
    kept = [x for x, u in zip(per, use) if u]
    return sum(kept) / len(kept)


def hand_ce(logits: torch.Tensor, ids: list[int], use: list[bool]) -> float:
    per = []
    for i, t in enumerate(ids):
        row = [float(v) for v in logits[i]]
        per.append(math.log(sum(math.exp(v) for v in row)) - row[t])
    kept = [x for x, u in zip(per, use) if u]
    return sum(kept) / len(kept)


def example_image() -> torch.Tensor:
    img = seeded_images(1, (4, 6), seed=3)
    # patch (0, 1) nearly constant: its variance (~1e-6) is where eps and the unbiased estimator matter
    img[0, :, 0:2, 2:4] = 0.5 + 1e-3 * torch.randn(3, 2, 2, generator=torch.Generator().manual_seed(4))
    return img


USE = [False, True, True, False, True]  # a loss mask over the K-1 = 5 predictions of the example


def test_patchify_matches_hand_layout():
    img = example_image()
    assert torch.allclose(aim_core.patchify(img, P)[0], torch.tensor(hand_patches(img[0], P)))


def test_pixel_target_and_loss_by_hand():
    img = example_image()
    tgt = aim_core.build_target("pixel", P)
    assert tgt.out_dim == P * P * 3
    t = tgt.make(img)
    expected = hand_patches(img[0], P)
    torch.testing.assert_close(t[0], torch.tensor(expected), rtol=0, atol=1e-6)
    pred = torch.randn(1, 5, 12)
    loss = tgt.loss(pred, t[:, 1:], torch.tensor([USE]))
    assert loss.item() == pytest.approx(hand_mse(pred[0], expected[1:], USE), rel=1e-5)


@pytest.mark.parametrize("eps", [1e-6, 1e-2])
def test_norm_pixel_target_by_hand(eps):
    img = example_image()
    tgt = aim_core.build_target("norm_pixel", P, norm_pix_eps=eps)
    t = tgt.make(img)
    expected = [hand_normalise(v, eps) for v in hand_patches(img[0], P)]
    torch.testing.assert_close(t[0], torch.tensor(expected), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(t[0, 1], torch.tensor(expected[1]), rtol=1e-3, atol=1e-6)  # the tiny-variance patch
    pred = torch.randn(1, 5, 12)
    loss = tgt.loss(pred, t[:, 1:], torch.tensor([USE]))
    assert loss.item() == pytest.approx(hand_mse(pred[0], expected[1:], USE), rel=1e-4)


def test_norm_pixel_uses_unbiased_var_and_eps():
    """On the nearly constant patch (variance ~1e-6) a biased variance or a missing eps are visibly off."""
    img = example_image()
    t = aim_core.build_target("norm_pixel", P).make(img)[0, 1]
    v = torch.tensor(hand_patches(img[0], P)[1], dtype=torch.float64)
    centred = v - v.mean()
    right = centred / torch.sqrt(v.var(unbiased=True) + 1e-6)
    biased = centred / torch.sqrt(v.var(unbiased=False) + 1e-6)
    no_eps = centred / torch.sqrt(v.var(unbiased=True))
    torch.testing.assert_close(t.double(), right, rtol=1e-3, atol=1e-6)
    for wrong in (biased, no_eps):
        assert (t.double() - wrong).abs().max() > 10 * (t.double() - right).abs().max() + 1e-4


def test_norm_pix_eps_override_reaches_the_target():
    assert build(norm_pix_eps=0.25).target.eps == 0.25
    assert build().target.eps == 1e-6


def test_kmeans_target_by_hand():
    img = example_image()
    codebook = torch.randn(4, 12, generator=torch.Generator().manual_seed(5))
    # make two centroids exact (normalised) patches so the nearest is unambiguous for them
    normed = [hand_normalise(v, 1e-6) for v in hand_patches(img[0], P)]
    codebook[2] = torch.tensor(normed[0])
    codebook[0] = torch.tensor(normed[4])
    tgt = aim_core.build_target("kmeans", P, num_clusters=4)
    with pytest.raises(RuntimeError, match="codebook"):
        tgt.make(img)
    with pytest.raises(ValueError, match="shape"):
        tgt.set_codebook(torch.zeros(3, 12))
    tgt.set_codebook(codebook)
    ids = tgt.make(img)[0].tolist()
    hand_ids = [min(range(4), key=lambda c: sum((a - float(b)) ** 2 for a, b in zip(v, codebook[c]))) for v in normed]
    assert ids == hand_ids and ids[0] == 2 and ids[4] == 0
    logits = torch.randn(1, 5, 4)
    loss = tgt.loss(logits, torch.tensor([ids[1:]]), torch.tensor([USE]))
    assert loss.item() == pytest.approx(hand_ce(logits[0], ids[1:], USE), rel=1e-5)


def hand_dvae_codes(tok: aim_core.DVAE, img: torch.Tensor) -> list[int]:
    """The tokenizer's encoder written out: per-patch projection, 3x3 neighbourhood mix, 1x1 logits, argmax."""
    conv1, _, conv2, _, conv3 = tok.encoder
    p = tok.patch_size
    patches = hand_patches(img, p)
    gh, gw = img.shape[1] // p, img.shape[2] // p
    w1 = conv1.weight.permute(0, 2, 3, 1).reshape(conv1.out_channels, -1)  # (hidden, p*p*C) in patch layout
    h1 = [F.gelu(w1 @ torch.tensor(v) + conv1.bias) for v in patches]
    codes = []
    for r in range(gh):
        for c in range(gw):
            acc = conv2.bias.clone()
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    if 0 <= r + dr < gh and 0 <= c + dc < gw:
                        acc += conv2.weight[:, :, dr + 1, dc + 1] @ h1[(r + dr) * gw + c + dc]
            logits = conv3.weight[:, :, 0, 0] @ F.gelu(acc) + conv3.bias
            codes.append(int(logits.argmax()))
    return codes


def test_dvae_target_by_hand():
    img = seeded_images(2, (6, 8), seed=7)
    torch.manual_seed(11)
    tok = aim_core.DVAE(P, vocab_size=7).eval()
    tgt = aim_core.build_target("dvae", P, dvae_vocab=7)
    with pytest.raises(RuntimeError, match="tokenizer"):
        tgt.make(img)
    tgt.set_tokenizer(tok)
    codes = tgt.make(img)
    assert codes.shape == (2, 12) and codes.dtype == torch.long
    for b in range(2):
        assert codes[b].tolist() == hand_dvae_codes(tok, img[b])
    assert len(set(codes.flatten().tolist())) > 1  # not a degenerate constant code
    logits = torch.randn(1, 5, 7)
    ids = codes[0, 1:6].tolist()
    assert tgt.loss(logits, codes[:1, 1:6], torch.tensor([USE])).item() == pytest.approx(
        hand_ce(logits[0], ids, USE), rel=1e-5
    )
    # the tokenizer stays frozen, also after model.train()
    tgt.train()
    assert not tgt.tokenizer.training and not any(p.requires_grad for p in tgt.tokenizer.parameters())


def test_dvae_training_reduces_reconstruction_error():
    imgs = seeded_images(8, 8, seed=0)
    tok0 = aim_core.train_dvae([imgs], 2, vocab_size=32, hidden=32, steps=0)
    tok = aim_core.train_dvae([imgs], 2, vocab_size=32, hidden=32, steps=150, lr=3e-3)
    grid = (4, 4)
    err = lambda t: F.mse_loss(t.decode_codes(t.encode(imgs), grid), imgs).item()  # noqa: E731
    assert err(tok) < 0.8 * err(tok0)
    with pytest.raises(ValueError):
        aim_core.train_dvae([], 2)


def test_loss_positions_exact():
    lp = aim_core.loss_positions(5, 3, torch.tensor([1, 3, 4]))
    assert lp.tolist() == [[True, True, True, True], [False, False, True, True], [False, False, False, True]]
    assert aim_core.loss_positions(5, 2, None).all() and aim_core.loss_positions(5, 2).shape == (2, 4)


@pytest.mark.parametrize("target", ["pixel", "norm_pixel", "kmeans", "dvae"])
def test_loss_ignores_prefix_positions(target):
    model = fit_target(build(target=target, attention="prefix", order="spiral"), seeded_images(4))
    x = seeded_images(2, seed=1)
    s = torch.tensor([4, 9])
    with torch.no_grad():
        preds = model(x, s)
        out = model.training_loss(x, s)
    assert torch.equal(out.loss_mask, aim_core.loss_positions(16, 2, s))
    assert out.loss_mask.sum(1).tolist() == [16 - 4, 16 - 9]  # one prediction per non-prefix patch
    base = out.loss.item()
    ignored = ~out.loss_mask
    # predictions at ignored positions (and the last one, which predicts nothing) do not matter
    noisy = preds.clone()
    noisy[:, :-1][ignored] += 100.0 * torch.randn_like(noisy[:, :-1][ignored])
    noisy[:, -1] += 100.0 * torch.randn_like(noisy[:, -1])
    assert model.loss_from_predictions(x, noisy, s).loss.item() == pytest.approx(base, rel=1e-6)
    # ... nor do targets there
    t = out.target.clone()
    t[ignored] = (t[ignored] + 1) % model.target.out_dim if target in ("kmeans", "dvae") else t[ignored] + 100.0
    assert model.target.loss(out.pred, t, out.loss_mask).item() == pytest.approx(base, rel=1e-6)
    # but a counted position does (the first non-prefix one of image 1: output s-1 predicts patch s)
    assert out.loss_mask[1, 8] and not out.loss_mask[1, 7]
    noisy = preds.clone()
    noisy[1, 8] += torch.randn_like(noisy[1, 8])
    assert model.loss_from_predictions(x, noisy, s).loss.item() != pytest.approx(base, rel=1e-4)


def test_training_loss_by_hand_with_order_and_prefix():
    model = build(target="norm_pixel", attention="prefix", order="spiral")
    x = seeded_images(2, seed=2)
    s = torch.tensor([2, 10])
    with torch.no_grad():
        preds = model(x, s)
        loss = model.training_loss(x, s).loss.item()
    perm = model.perm.tolist()
    total, count = 0.0, 0
    for b in range(2):
        patches = [hand_normalise(v, 1e-6) for v in hand_patches(x[b], 4)]
        for i in range(15):  # output i predicts the patch at sequence position i + 1
            if i + 1 >= int(s[b]):
                target = patches[perm[i + 1]]
                total += sum((float(preds[b, i, j]) - t) ** 2 for j, t in enumerate(target)) / len(target)
                count += 1
    assert count == (16 - 2) + (16 - 10)
    assert loss == pytest.approx(total / count, rel=1e-4)


def test_causal_loss_counts_every_position():
    model = build(attention="causal")
    x = seeded_images(2)
    out = model.training_loss(x, torch.tensor([5, 9]))  # a prefix_len is ignored in causal mode
    assert out.loss_mask.all() and out.pred.shape == (2, 15, 48) and out.target.shape == (2, 15, 48)


def test_unknown_target_raises():
    with pytest.raises(ValueError, match="target"):
        aim_core.build_target("sift", 4)
