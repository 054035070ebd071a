"""Probe results depend on the trunk, the data and the seed only: not on what the process drew before
(a sweep's trial process trains and probes several trials one after another)."""

from __future__ import annotations

import torch

import aim_core
from pipelines.config import ExperimentConfig
from pipelines.probe import run_probes


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.randn(n, 3, 16, 16, generator=g) + y.view(-1, 1, 1, 1).float()  # learnable: class shifts the mean
    return x, y


def test_probes_ignore_the_global_random_state():
    cfg = ExperimentConfig.model_validate(
        {
            "name": "p",
            "seed": 3,
            "model": {"preset": "aim-test", "img_size": 16},
            "probe": {"epochs": 3, "batch_size": 16},
            "data": {"pool": {"uri": "/unused"}, "curated": {"uri": "/unused"}},
        }
    )
    torch.manual_seed(0)
    model = aim_core.build_model("aim-test", img_size=16)
    train, test = _data(96, 1), _data(48, 2)
    results = []
    for draw in (0, 1):  # a different global state before each call, as after training another trial
        torch.manual_seed(100 + draw)
        torch.rand(1000 * (draw + 1))
        results.append(run_probes(cfg, model, train, test))
    assert results[0].attentive_top1 == results[1].attentive_top1
    assert results[0].linear_top1 == results[1].linear_top1


def test_probe_init_follows_the_seed_and_leaves_the_global_state_alone():
    from pipelines.probe import _seeded

    def init(seed: int) -> torch.Tensor:
        return torch.cat(
            [p.detach().flatten() for p in _seeded(lambda: aim_core.AttentiveProbe(32, 4, 2), seed).parameters()]
        )

    torch.manual_seed(7)
    expected_next = torch.rand(3)
    torch.manual_seed(7)
    a = init(3)
    assert torch.equal(torch.rand(3), expected_next)  # the caller's random stream is untouched
    torch.rand(50)
    assert torch.equal(init(3), a) and not torch.equal(init(4), a)


def test_features_come_back_to_the_cpu_in_bf16_from_the_models_device():
    from pipelines.probe import extract
    from pipelines.probe_runner import probe_device

    assert probe_device("cpu") == torch.device("cpu")
    assert probe_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = aim_core.build_model("aim-test", img_size=16).to(probe_device("auto"))
    feats = extract(model, _data(5, 0)[0], model.resolve_blocks(None), batch_size=2)
    assert feats.shape == (5, model.config.num_patches, model.config.width)
    assert feats.device.type == "cpu" and feats.dtype == torch.bfloat16
