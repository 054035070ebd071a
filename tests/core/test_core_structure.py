"""The paper's architecture, written out by hand from the model's own weights."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from core_helpers import build, seeded_images
from torch import nn

import aim_core
from aim_core.layers import sincos_2d


def ln(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = x.var(-1, unbiased=False, keepdim=True)
    return (x - mu) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def mlp(x: torch.Tensor, m: nn.Module) -> torch.Tensor:
    return F.gelu(x @ m.fc1.weight.T) @ m.fc2.weight.T


def attention(x: torch.Tensor, attn: nn.Module, may_attend_mask: torch.Tensor | None) -> torch.Tensor:
    b, n, d = x.shape
    h = attn.num_heads
    q, k, v = (x @ attn.qkv.weight.T).reshape(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d // h)
    if may_attend_mask is not None:
        scores = scores.masked_fill(~may_attend_mask, float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d) @ attn.proj.weight.T


def hand_forward(model: aim_core.AIM, images: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    cfg = model.config
    p = cfg.patch_size
    pe = model.preprocessor.patch_embed
    # patch projection as a matmul over (C, p, p)-flattened patches, with the conv's bias
    patches = images.unfold(2, p, p).unfold(3, p, p)  # (B, C, gh, gw, p, p)
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(images.shape[0], cfg.num_patches, -1)
    x = patches @ pe.weight.reshape(cfg.width, -1).T + pe.bias
    x = ln(x, model.preprocessor.norm) + sincos_2d(cfg.width, cfg.grid)  # LayerNorm, then positions
    x = x[:, model.perm]  # sequence order, positions attached
    for blk in model.blocks:  # pre-norm blocks
        x = x + attention(ln(x, blk.norm1), blk.attn, mask)
        x = x + mlp(ln(x, blk.norm2), blk.mlp)
    x = ln(x, model.norm)
    head = model.head
    if cfg.head == "none":
        return x @ head.out.weight.T
    x = x @ head.proj_in.weight.T + sincos_2d(cfg.head_width, cfg.grid)[model.perm]
    for blk in head.blocks:
        if cfg.head == "mlp":  # Apple's head block: x + LN1(x), then x + MLP(LN2(x))
            x = x + ln(x, blk.norm1)
        else:
            x = x + attention(ln(x, blk.norm1), blk.attn, mask)
        x = x + mlp(ln(x, blk.norm2), blk.mlp)
    return ln(x, head.norm) @ head.out.weight.T


@pytest.mark.parametrize("head", aim_core.HEADS)
@pytest.mark.parametrize("attention,order", [("prefix", "spiral"), ("causal", "random"), ("bidirectional", "raster")])
def test_forward_matches_hand_written_aim(head, attention, order):
    model = build(head=head, attention=attention, order=order, depth=2, head_depth=2)
    # non-trivial norm parameters so that a misplaced LayerNorm shows
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.normal_(1.0, 0.3)
                m.bias.normal_(0.0, 0.3)
    x = seeded_images(2)
    s = torch.tensor([3, 10]) if attention == "prefix" else None
    mask = aim_core.may_attend(attention, 16, 2, s)
    with torch.no_grad():
        torch.testing.assert_close(model(x, s), hand_forward(model, x, mask), rtol=1e-4, atol=1e-4)


def test_paper_layer_choices():
    model = build(head="transformer")
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears and all(m.bias is None for m in linears)  # bias-free linear layers
    assert model.preprocessor.patch_embed.bias is not None  # the patch conv keeps its bias
    assert all(isinstance(m.act, nn.GELU) for m in model.modules() if hasattr(m, "fc1"))
    assert model.blocks[0].mlp.fc1.out_features == 4 * model.config.width
    names = [n for n, _ in model.named_parameters()]
    assert not any(
        "cls_token" in n or "pos_embed" in n or "gamma" in n for n in names
    )  # no cls, fixed pos, no LayerScale


def test_xavier_init():
    model = build(preset="aim-tiny", depth=1)
    w = model.blocks[0].attn.qkv.weight
    bound = math.sqrt(6 / (w.shape[0] + w.shape[1]))
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
