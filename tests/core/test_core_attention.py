"""The SDPA path against attention written out by hand, with the same boolean mask semantics."""

from __future__ import annotations

import math

import pytest
import torch
from core_helpers import build, seeded_images

import aim_core
from aim_core import layers
from aim_core.layers import Attention


def reference_attention(attn: Attention, x: torch.Tensor, may_attend_mask: torch.Tensor | None) -> torch.Tensor:
    """softmax(q k^T / sqrt(hd)) v per head, where `may_attend_mask[b, 0, q, k]` False removes key k."""
    b, n, d = x.shape
    h = attn.num_heads
    hd = d // h
    wq, wk, wv = attn.qkv.weight.split(d, dim=0)
    out = torch.zeros(b, n, d, dtype=x.dtype)
    for head in range(h):
        cols = slice(head * hd, (head + 1) * hd)
        q, k, v = x @ wq[cols].T, x @ wk[cols].T, x @ wv[cols].T  # (B, N, hd)
        scores = q @ k.transpose(1, 2) / math.sqrt(hd)  # (B, Nq, Nk)
        if may_attend_mask is not None:
            scores = scores.masked_fill(~may_attend_mask[:, 0], float("-inf"))
        out[:, :, cols] = scores.softmax(dim=-1) @ v
    return out @ attn.proj.weight.T


def hand_mask(kind: str, k: int, prefix_len: list[int]) -> torch.Tensor | None:
    if kind == "none":
        return None
    rows = []
    for s in prefix_len:
        rows.append([[(kind == "prefix" and key < s) or key <= q for key in range(k)] for q in range(k)])
    return torch.tensor(rows)[:, None]


@pytest.mark.parametrize("kind", ["causal", "prefix", "none"])
@pytest.mark.parametrize("dim,heads,k", [(32, 4, 9), (48, 3, 16)])
def test_sdpa_matches_explicit_softmax(kind, dim, heads, k):
    torch.manual_seed(0)
    attn = Attention(dim, heads)
    x = torch.randn(3, k, dim)
    s = [1, 4, k - 1]
    mask = hand_mask(kind, k, s)
    if mask is not None:  # the library's mask is the same as the one written out here
        lib = aim_core.may_attend(kind, k, batch=3, prefix_len=torch.tensor(s))
        assert torch.equal(lib.expand_as(mask), mask)
    with torch.no_grad():
        torch.testing.assert_close(attn(x, mask), reference_attention(attn, x, mask), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "attention,prefix_len", [("causal", None), ("prefix", [2, 13]), ("prefix", None), ("bidirectional", None)]
)
def test_whole_model_matches_explicit_attention(monkeypatch, attention, prefix_len):
    """Swap every attention call in the model for the hand-written one: outputs agree to 1e-5."""
    model = build(attention=attention, order="checkerboard", head="transformer")
    x = seeded_images(2)
    s = None if prefix_len is None else torch.tensor(prefix_len)
    with torch.no_grad():
        fast = model(x, s)

        def explicit_sdpa(q, k, v, attn_mask=None):
            scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
            if attn_mask is not None:
                scores = scores.masked_fill(~attn_mask, float("-inf"))
            return scores.softmax(-1) @ v

        calls = []
        monkeypatch.setattr(
            layers.F, "scaled_dot_product_attention", lambda *a, **kw: calls.append(1) or explicit_sdpa(*a, **kw)
        )
        slow = model(x, s)
    assert len(calls) == model.config.depth + model.config.head_depth
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-5)


@pytest.mark.parametrize("explicit", [True, False])
def test_bf16_cpu_attention_path_is_chosen_per_module(monkeypatch, explicit):
    """bf16 on the CPU: `explicit_attention` by default, SDPA with `explicit_lowp_cpu=False`; same result
    to bf16 rounding either way. The switch is an argument of the module, not a global."""
    torch.manual_seed(0)
    attn = Attention(32, 4, explicit_lowp_cpu=explicit).to(torch.bfloat16)
    x = torch.randn(2, 9, 32, dtype=torch.bfloat16)
    mask = hand_mask("prefix", 9, [2, 5])
    calls = []
    sdpa = layers.F.scaled_dot_product_attention
    monkeypatch.setattr(layers.F, "scaled_dot_product_attention", lambda *a, **kw: calls.append(1) or sdpa(*a, **kw))
    with torch.no_grad():
        out = attn(x, mask)
        ref = reference_attention(attn.float(), x.float(), mask)
    assert calls == ([] if explicit else [1])
    torch.testing.assert_close(out.float(), ref, rtol=0, atol=0.05)


def test_attention_rejects_bad_heads():
    with pytest.raises(ValueError):
        Attention(30, 4)


def test_sincos_2d_by_hand():
    emb = layers.sincos_2d(8, (3, 4))  # (K, 8): [sin c, sin c/100, cos c, cos c/100, same for the row]
    assert emb.shape == (12, 8)
    for idx in (0, 5, 11):
        r, c = divmod(idx, 4)
        expected = [
            math.sin(c),
            math.sin(c / 100),
            math.cos(c),
            math.cos(c / 100),
            math.sin(r),
            math.sin(r / 100),
            math.cos(r),
            math.cos(r / 100),
        ]
        torch.testing.assert_close(emb[idx], torch.tensor(expected))
    assert len({tuple(row.tolist()) for row in emb}) == 12  # every position distinct
    with pytest.raises(ValueError):
        layers.sincos_2d(6, (2, 2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention path is CUDA-only")
@pytest.mark.parametrize("attention,prefix_len", [("prefix", [3, 11]), ("prefix", None), ("causal", None)])
def test_flex_path_matches_sdpa_on_cuda(attention, prefix_len):
    sdpa = build(attention=attention, head="transformer", order="spiral").cuda()
    flex = build(attention=attention, head="transformer", order="spiral", attn_impl="flex").cuda()
    flex.load_state_dict(sdpa.state_dict())
    x = seeded_images(2).cuda()
    s = None if prefix_len is None else torch.tensor(prefix_len, device="cuda")
    mask = flex.build_mask(2, s)
    assert not isinstance(mask, torch.Tensor)  # a BlockMask, built once per forward
    out_s, out_f = sdpa.training_loss(x, s), flex.training_loss(x, s)
    torch.testing.assert_close(out_f.pred, out_s.pred, rtol=1e-3, atol=1e-3)
    out_s.loss.backward()
    out_f.loss.backward()
    for (n, ps), pf in zip(sdpa.named_parameters(), flex.parameters()):
        if ps.grad is not None:
            torch.testing.assert_close(pf.grad, ps.grad, rtol=1e-2, atol=1e-3, msg=n)
