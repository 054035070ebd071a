"""Model hooks: FLOPs, no-weight-decay names, feature extraction; and aim_core's import isolation."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from core_helpers import build, seeded_images
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import aim_core


@pytest.mark.parametrize("head", aim_core.HEADS)
@pytest.mark.parametrize("overrides", [{}, dict(width=64, num_heads=4, depth=3, head_width=64, img_size=32)])
def test_flops_match_flop_counter(head, overrides):
    model = build(attention="bidirectional", head=head, **overrides)
    batch = 2
    x = seeded_images(batch, model.config.img_size)
    counter = FlopCounterMode(display=False)
    # FlopCounterMode does not count the fused CPU SDPA kernel; the math backend exposes its matmuls
    with torch.no_grad(), counter, sdpa_kernel(SDPBackend.MATH):
        model(x)
    measured = counter.get_total_flops() / batch
    flops = model.flops_per_image()
    assert flops["forward"] == pytest.approx(measured, rel=0.02)
    assert flops["forward"] == flops["trunk_forward"] + flops["head_forward"]
    assert flops["train"] == 3 * flops["forward"]
    # the counter saw the attention itself (QK^T and AV), not only the linear layers
    assert any("bmm" in str(op) for op in counter.get_flop_counts()["Global"])


def test_flops_paper_scale():
    """For aim-600m the trunk forward is about 2 * params * tokens plus attention."""
    with torch.device("meta"):
        model = aim_core.build_model("aim-600m")
    f = model.flops_per_image()
    ideal = 2 * 12 * 1536**2 * 24 * 256 + 24 * 4 * 256**2 * 1536
    assert f["trunk_forward"] == pytest.approx(ideal, rel=0.02)


@pytest.mark.parametrize("head", aim_core.HEADS)
@pytest.mark.parametrize("target", ["norm_pixel", "dvae"])
def test_no_weight_decay(head, target):
    model = build(head=head, target=target)
    skip = model.no_weight_decay()
    params = dict(model.named_parameters())
    assert skip <= set(params)
    norms = {
        f"{mn}.{pn}" if mn else pn
        for mn, m in model.named_modules()
        if isinstance(m, (nn.LayerNorm, nn.BatchNorm1d))
        for pn, _ in m.named_parameters(recurse=False)
    }
    biases = {n for n in params if n.endswith(".bias")}
    assert norms and biases
    assert norms <= skip and biases <= skip
    assert "preprocessor.patch_embed.bias" in skip
    for name in skip:
        assert params[name].ndim < 2, f"{name} is a weight matrix but skips weight decay"
    # every weight matrix (and the patch conv) is decayed
    assert {n for n, p in params.items() if p.ndim >= 2} == set(params) - skip


def test_extract_features_blocks():
    model = build(depth=3, order="random", attention="prefix")
    x = seeded_images(2)
    raw = []
    hooks = [blk.register_forward_hook(lambda m, i, o: raw.append(o)) for blk in model.blocks]
    with torch.no_grad():
        feats = model.extract_features(x, blocks=[0, 2])
    for h in hooks:
        h.remove()
    assert feats.shape == (2, 16, 32)
    expected = ((raw[0] + raw[2]) / 2)[:, model.inverse]  # raw block outputs (no final norm), raster order
    torch.testing.assert_close(feats, expected)
    with torch.no_grad():
        torch.testing.assert_close(model.extract_features(x, blocks=[-1]), model.extract_features(x, blocks=[2]))
        # default: the last 6 blocks, i.e. all 3 here
        torch.testing.assert_close(model.extract_features(x), model.extract_features(x, blocks=[0, 1, 2]))
    with pytest.raises(ValueError):
        model.extract_features(x, blocks=[3])


def test_param_counts_small():
    model = build(head="mlp")
    counts = model.param_counts()
    trunk = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("preprocessor.", "blocks.", "norm.")))
    head = sum(p.numel() for n, p in model.named_parameters() if n.startswith("head."))
    assert counts == {"trunk": trunk, "head": head, "total": trunk + head}


BLOCKED = ("ray", "mlflow", "yaml", "pydantic")


def test_import_isolation():
    code = textwrap.dedent(f"""
        import importlib.abc, sys
        BLOCKED = {BLOCKED!r}

        class Blocker(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError("blocked: " + name)
                return None

        sys.meta_path.insert(0, Blocker())
        for name in BLOCKED:  # the blocker really blocks
            try:
                __import__(name)
            except ImportError:
                pass
            else:
                raise SystemExit("blocker failed for " + name)

        import pkgutil, importlib, torch
        import aim_core
        for mod in pkgutil.iter_modules(aim_core.__path__):
            importlib.import_module("aim_core." + mod.name)
        model = aim_core.build_model("aim-test", attn_impl="sdpa")
        out = model.training_loss(torch.randn(2, 3, 16, 16), torch.tensor([3, 7]))
        out.loss.backward()
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not leaked, leaked
        print("OK")
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().endswith("OK")
