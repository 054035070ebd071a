"""`scaling.compile`: every repeated block is compiled (trunk and head), and the compiled model computes the same
loss."""

from __future__ import annotations

import torch

import aim_core
from pipelines.train import parallel


def test_compile_covers_trunk_and_head_blocks_and_matches_eager():
    torch.manual_seed(0)
    model = aim_core.build_model("aim-test", head="transformer")
    x = torch.randn(3, 3, 16, 16)
    s = torch.tensor([1, 5, 9])
    eager = model.training_loss(x, s).loss.item()

    forward = parallel.parallelize(model, "ddp", 1, compile_model=True)
    assert forward is model
    blocks = model.repeated_blocks()
    assert len(blocks) == model.config.depth + model.config.head_depth
    assert all(blk._compiled_call_impl is not None for blk in blocks)  # head blocks too, not only the trunk

    out = forward(x, s)
    compiled = model.loss_from_predictions(x, out, s).loss.item()
    assert abs(compiled - eager) < 1e-4 * max(1.0, abs(eager))
