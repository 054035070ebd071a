"""Forward/backward over every preset and head x target x order x attention combination; overfitting."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from core_helpers import build, fit_target, seeded_images

import aim_core


def check_step(model: aim_core.AIM, images: torch.Tensor) -> None:
    model.train()
    s = model.sample_prefix_len(images.shape[0], torch.Generator().manual_seed(0))
    preds = model(images, s)
    k = model.config.num_patches
    assert preds.shape == (images.shape[0], k, model.target.out_dim)
    assert torch.isfinite(preds).all()
    out = model.training_loss(images, s)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss) and out.loss.item() > 0
    out.loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    for name, p in trainable:
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"
    # only the frozen target machinery (dVAE tokenizer) is excluded from training
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert all(n.startswith("target.tokenizer.") for n in frozen)


COMBOS = list(itertools.product(aim_core.HEADS, aim_core.TARGETS, aim_core.ORDERS, aim_core.ATTENTION_MODES))


@pytest.mark.parametrize("head,target,order,attention", COMBOS, ids=["-".join(c) for c in COMBOS])
def test_every_combination_trains(head, target, order, attention):
    images = seeded_images(3, 16)
    model = fit_target(build(head=head, target=target, order=order, attention=attention), images)
    check_step(model, images)


@pytest.mark.parametrize(
    "preset,overrides",
    [
        ("aim-test", {}),
        ("aim-tiny", {}),
        ("aim-small", dict(depth=2, head_depth=1)),
        ("aim-600m", dict(img_size=28, depth=1, head_depth=1)),  # paper widths, shrunk in depth and image size
    ],
)
def test_presets_train(preset, overrides):
    cfg = aim_core.resolve_config(preset, **overrides)
    images = seeded_images(2, cfg.img_size)
    model = build(preset=preset, **overrides)
    check_step(model, images)


def test_loss_is_sane_at_init():
    """norm_pixel targets have unit variance per patch: a fresh model's loss is O(1)."""
    model = build(attention="causal")
    loss = model.training_loss(seeded_images(8)).loss.item()
    assert 0.3 < loss < 10


def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    model = aim_core.build_model("aim-test", attention="causal", target="norm_pixel", attn_impl="sdpa").train()
    images = seeded_images(4, 16, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(200):
        loss = model.training_loss(images).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.1 * losses[0], (losses[0], losses[-1])


def test_prefix_model_overfits_one_batch():
    torch.manual_seed(0)
    model = aim_core.build_model("aim-test", attention="prefix", attn_impl="sdpa").train()
    images = seeded_images(4, 16, seed=0)
    s = torch.tensor([3, 5, 8, 12])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    first = None
    for _ in range(200):
        loss = model.training_loss(images, s).loss
        first = first if first is not None else loss.item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first
