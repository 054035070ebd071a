"""infra/estimate.py: the numbers follow from the model's FLOPs, the MFU and the stated assumptions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_estimate_json_is_consistent(capsys):
    from infra import estimate

    estimate.main(["--no-sweep-file", "--trials", "10", "--mfu", "0.5", "--nodes", "5"])
    d = json.loads(capsys.readouterr().out)
    a = d["assumptions"]
    from aim_core import build_model
    import torch

    with torch.device("meta"):
        fpi = build_model("aim-600m").flops_per_image()["train"]
    assert a["train_flops_per_image"] == fpi
    images = a["ablation_schedule"]["steps"] * a["ablation_schedule"]["batch_size"]
    grid = d["ablation_grid"]
    assert grid["train_flops"] == 10 * fpi * images
    gpu_h = grid["train_flops"] / (989e12 * 0.5) / 3600
    assert grid["gpu_hours"] == pytest.approx(gpu_h, rel=1e-3)
    assert grid["cost_usd_ondemand"] == pytest.approx(gpu_h * a["price_per_gpu_hour_usd"]["ondemand"], abs=1)
    assert grid["concurrent_trials"] == 5 and grid["waves"] == 2
    full = d["full_aim_600m_run"]
    assert full["train_flops"] == fpi * 500_000 * 4096
    assert "ASSUMPTION" in a["ablation_schedule"]["note"] and "ASSUMPTION" in a["price_per_gpu_hour_usd"]["note"]


def test_estimate_costs_each_trial_of_a_sweep_file(tmp_path, capsys):
    """With a sweep file, each trial is costed with its own model's FLOPs (here two presets)."""
    import yaml

    from aim_core import build_model
    from infra import estimate
    import torch

    sweep = tmp_path / "grid.yaml"
    sweep.write_text(yaml.safe_dump({
        "name": "grid", "base": str(ROOT / "experiments/cifar10-tiny.yaml"), "mode": "one_at_a_time",
        "axes": {"size": {"tiny": {"model.preset": "aim-tiny"}, "small": {"model.preset": "aim-small"}}}}))
    estimate.main(["--sweep", str(sweep), "--steps", "1000", "--batch-size", "256"])
    d = json.loads(capsys.readouterr().out)
    with torch.device("meta"):
        expect = {p: build_model(p).flops_per_image()["train"] for p in ("aim-tiny", "aim-small")}
    got = {t["preset"]: t["train_flops_per_image"] for t in d["per_trial"]}
    assert got == expect
    assert d["ablation_grid"]["train_flops"] == sum(expect.values()) * 1000 * 256
    assert d["ablation_grid"]["trials"] == 2 and "grid.yaml" in d["assumptions"]["trials_source"]
