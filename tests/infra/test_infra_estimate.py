"""infra/estimate.py: the numbers follow from the model's FLOPs, the MFU and the stated assumptions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_estimate_json_is_consistent():
    out = subprocess.run([sys.executable, "-m", "infra.estimate", "--no-sweep-file", "--trials", "10",
                          "--mfu", "0.5", "--nodes", "5"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
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
