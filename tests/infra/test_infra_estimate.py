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
    import torch

    from aim_core import build_model

    with torch.device("meta"):
        fpi = build_model("aim-600m").flops_per_image()["train"]
    assert a["train_flops_per_image"] == fpi
    images = a["ablation_schedule"]["steps"] * a["ablation_schedule"]["batch_size"]
    grid = d["ablation_grid"]
    assert grid["train_flops"] == 10 * fpi * images
    gpu_h = grid["train_flops"] / (989e12 * 0.5) / 3600
    assert grid["gpu_hours"] == pytest.approx(gpu_h, rel=1e-3)
    assert grid["cost_usd_ondemand"] == pytest.approx(gpu_h * a["price_per_gpu_hour_usd"]["ondemand"], abs=1)
    assert grid["concurrent_trials"] == 5
    per_h = d["per_trial"][0]["wall_hours"]  # 10 equal trials on 5 slots: two after another
    assert grid["wall_clock_days"] == pytest.approx(2 * per_h / 24, abs=0.06)
    full = d["full_aim_600m_run"]
    assert full["train_flops"] == fpi * 500_000 * 4096
    assert "ASSUMPTION" in a["ablation_schedule"]["note"] and "ASSUMPTION" in a["price_per_gpu_hour_usd"]["note"]


def test_estimate_costs_each_trial_of_a_sweep_file(tmp_path, capsys):
    """With a sweep file, each trial is costed with its own model's FLOPs (the base and two presets)."""
    import torch
    import yaml

    from aim_core import build_model
    from infra import estimate

    base = {
        "name": "est",
        "model": {"preset": "aim-test"},
        "data": {"pool": {"uri": str(tmp_path / "pool")}, "curated": {"uri": str(tmp_path / "curated")}},
    }
    sweep = tmp_path / "grid.yaml"
    sweep.write_text(
        yaml.safe_dump(
            {
                "name": "grid",
                "experiment": base,
                "mode": "one_at_a_time",
                "axes": {
                    "size": {
                        "tiny": {"model.preset": "aim-tiny"},
                        "small": {"model.preset": "aim-small"},
                        "tiny_again": {"model.preset": "aim-tiny", "model.img_size": 32},
                    }
                },
            }
        )
    )
    estimate.main(["--sweep", str(sweep), "--steps", "1000", "--batch-size", "256"])
    d = json.loads(capsys.readouterr().out)
    with torch.device("meta"):
        expect = {p: build_model(p).flops_per_image()["train"] for p in ("aim-test", "aim-tiny", "aim-small")}
    got = {t["preset"]: t["train_flops_per_image"] for t in d["per_trial"]}
    assert got == expect
    assert d["ablation_grid"]["train_flops"] == sum(expect.values()) * 1000 * 256
    assert d["ablation_grid"]["trials"] == 3 and "grid.yaml" in d["assumptions"]["trials_source"]
    # aim-tiny's own img_size is 32: `tiny_again` resolves to the same run as `tiny` and is counted once
    assert [t["same_as"] for t in d["per_trial"] if t["preset"] == "aim-tiny"] == [["size=tiny_again"]]


def test_estimate_multiplies_by_the_sweep_seeds(tmp_path, capsys):
    """`seeds: [0, 1, 2]` plans (and costs) every distinct trial once per seed."""
    import yaml

    from infra import estimate

    base = {
        "name": "est",
        "model": {"preset": "aim-test"},
        "data": {"pool": {"uri": str(tmp_path / "pool")}, "curated": {"uri": str(tmp_path / "curated")}},
    }
    spec = {
        "name": "seeded",
        "experiment": base,
        "mode": "one_at_a_time",
        "axes": {"size": {"test": {"model.preset": "aim-test"}, "tiny": {"model.preset": "aim-tiny"}}},
    }
    got = {}
    for seeds in (None, [0, 1, 2]):
        path = tmp_path / f"s{len(seeds or [])}.yaml"
        path.write_text(yaml.safe_dump({**spec, **({"seeds": seeds} if seeds else {})}))
        estimate.main(["--sweep", str(path), "--steps", "1000", "--batch-size", "256"])
        got[bool(seeds)] = json.loads(capsys.readouterr().out)
    one, three = got[False], got[True]
    assert one["ablation_grid"]["trials"] == 2  # size=test is the base run again
    assert three["ablation_grid"]["trials"] == 6
    assert three["ablation_grid"]["train_flops"] == 3 * one["ablation_grid"]["train_flops"]
    assert sorted(t["seed"] for t in three["per_trial"]) == [0, 0, 1, 1, 2, 2]
    assert "3 seeds" in three["assumptions"]["trials_source"]
