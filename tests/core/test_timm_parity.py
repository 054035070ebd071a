"""What aim_core and the optimiser re-wrote from timm (to keep timm's ~2 s import out of every process) gives
timm's numbers, and importing aim_core or the training loop no longer imports timm."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from timm.layers import Mlp as TimmMlp
from timm.optim import param_groups_weight_decay
from timm.scheduler import CosineLRScheduler
from torch import nn

import aim_core
from aim_core.layers import Mlp
from pipelines.config import OptimSection, ScheduleSection
from pipelines.train.optim import build_optimizer, build_scheduler, param_groups


def test_mlp_matches_timm_bit_for_bit():
    torch.manual_seed(0)
    ours, ref = Mlp(24, 96, bias=False), TimmMlp(24, 96, act_layer=nn.GELU, bias=False)
    assert ours.state_dict().keys() == ref.state_dict().keys()  # checkpoints and ml-aim weights load as before
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(3, 7, 24)
    assert torch.equal(ours(x), ref(x))
    with_bias, ref_bias = Mlp(8, 16), TimmMlp(8, 16, act_layer=nn.GELU)
    ref_bias.load_state_dict(with_bias.state_dict())
    assert torch.equal(with_bias(x[..., :8]), ref_bias(x[..., :8]))


@pytest.mark.parametrize("wd", [0.05, 0.0])
def test_param_groups_match_timm(wd):
    model = aim_core.build_model("aim-test", img_size=16)
    skip = set(model.no_weight_decay())
    ours, ref = param_groups(model, wd, skip), param_groups_weight_decay(model, wd, no_weight_decay_list=skip)
    assert [g["weight_decay"] for g in ours] == [g["weight_decay"] for g in ref]
    assert [[id(p) for p in g["params"]] for g in ours] == [[id(p) for p in g["params"]] for g in ref]


@pytest.mark.parametrize(
    "sched",
    [
        ScheduleSection(steps=200, warmup_fraction=0.025),
        ScheduleSection(steps=37, warmup_fraction=0.3, warmup_lr_init=1e-4, min_lr=1e-5),
        ScheduleSection(steps=10, warmup_fraction=0.0),
    ],
)
def test_schedule_matches_timm_at_every_step(sched):
    def opt():
        model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        return build_optimizer(model, OptimSection(lr=3e-3, batch_size=512))

    o1, o2 = opt(), opt()
    ours = build_scheduler(o1, sched)
    warmup = int(round(sched.warmup_fraction * sched.steps))
    ref = CosineLRScheduler(
        o2, t_initial=sched.steps, lr_min=sched.min_lr, warmup_t=warmup, warmup_lr_init=sched.warmup_lr_init,
        warmup_prefix=False, t_in_epochs=False,
    )  # fmt: skip
    assert [g["lr"] for g in o1.param_groups] == [g["lr"] for g in o2.param_groups]  # before the first update
    for n in range(sched.steps + 3):
        ours.step_update(n)
        ref.step_update(n)
        assert [g["lr"] for g in o1.param_groups] == [g["lr"] for g in o2.param_groups], n


def test_old_timm_scheduler_state_loads():
    """Checkpoints written before the rewrite hold timm's scheduler state: they restore the same schedule."""
    o1 = build_optimizer(nn.Linear(4, 4), OptimSection())
    sched = ScheduleSection(steps=50, warmup_fraction=0.1)
    ref = CosineLRScheduler(o1, t_initial=50, lr_min=0.0, warmup_t=5, warmup_lr_init=1e-6, t_in_epochs=False)
    ours = build_scheduler(build_optimizer(nn.Linear(4, 4), OptimSection()), sched)
    ours.load_state_dict(ref.state_dict())
    assert ours.lr_at(20) == ref._get_lr(20)


@pytest.mark.parametrize("module", ["aim_core", "pipelines.train.loop", "pipelines.config", "pipelines.cli"])
def test_no_timm_on_import(module):
    code = f"import sys, {module}; print(sorted(m for m in ('timm', 'torchvision') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"importing {module} imports {out.strip()}"
