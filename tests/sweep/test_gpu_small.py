"""experiments/ablations/gpu-small.yaml: the paper's axes for one GPU. Planned on the CPU (dry run), and one
trial of it run for real on the CPU with the steps, the size, the data and the GPU overridden tiny."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.sweep.runner import plan_resources
from pipelines.sweep.spec import load_sweep

ROOT = Path(__file__).resolve().parents[2]
GPU_SMALL = ROOT / "experiments/ablations/gpu-small.yaml"
PAPER_AXES = {"target", "order", "crop_scale", "attention", "head", "head_depth", "head_width", "shape"}


def test_gpu_small_covers_the_papers_axes_packed_on_one_gpu():
    spec, trials = load_sweep(GPU_SMALL)
    assert set(spec.axes) == PAPER_AXES and len(spec.seeds) >= 2
    runs = [t for t in trials if t.duplicate_of is None]
    assert all(t.config.schedule.steps >= 2000 for t in runs)
    sc = runs[0].config.scaling
    assert sc.use_gpu and sc.num_workers == 0 and 0 < sc.gpus_per_worker < 1
    plan = plan_resources(spec, trials, 16.0)
    assert plan.max_concurrent * sc.gpus_per_worker <= 1.0, "the packed trials fit on one GPU"
    assert {t.config.aim_config().attention for t in runs if t.axis == "order"} == {"causal"}


def test_gpu_small_dry_run_on_the_cpu():
    out = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "sweep", str(GPU_SMALL), "--dry-run", "--cluster-cpus", "16"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    text = " ".join((out.stdout + out.stderr).split())
    assert "34 trial(s) to run" in text and "max_concurrent_trials=8" in text, text[:600]


@pytest.mark.ray
def test_gpu_small_one_trial_cpu_smoke(ray_local, demo_data, tmp_path):
    """gpu-small's own `set:` (its model, precision, packing), with the steps, the size, the data and the GPU
    overridden tiny, one axis value: one real trial trains and probes on the CPU."""
    from pipelines.sweep.runner import run_sweep
    from tests.conftest import experiment

    spec = yaml.safe_load(GPU_SMALL.read_text())
    base = experiment(demo_data, tmp_path, "unused", probe={"epochs": 2, "batch_size": 64, "lr": 3e-3})
    base.pop("name")
    tiny = {
        "model.preset": "aim-test",
        "model.img_size": 16,
        "model.width": 32,
        "model.depth": 2,
        "model.num_heads": 2,
        "model.head_width": 32,
        "model.head_depth": 1,
        "optim.batch_size": 16,
        "schedule.steps": 4,
        "storage.checkpoint_every": 4,
        "scaling.use_gpu": False,
        "scaling.gpus_per_worker": 0,
        "scaling.cpus_per_worker": 0.25,
        "data.decode.num_cpus": 0.25,
        "tracking.experiment": "test",
        "probe.train_limit": 200,
        "probe.test_limit": 100,
    }
    keep = {k: v for k, v in spec["set"].items() if not k.startswith(("target.", "scaling.precision"))}
    smoke = {
        "name": "gpu-small-smoke",
        "experiment": base,
        "mode": spec["mode"],
        "seeds": spec["seeds"][:1],
        "set": {**keep, **tiny},
        "axes": {"head": {"none": spec["axes"]["head"]["none"]}},
        "resources": {"cpus_per_trial": 0.25, "max_concurrent_trials": 1},
    }
    (tmp_path / "smoke.yaml").write_text(yaml.safe_dump(smoke))
    s, trials = load_sweep(tmp_path / "smoke.yaml")
    plan = plan_resources(s, trials, 2.0)
    assert [t.trial_id for t in plan.trials] == ["base", "head=none"]
    plan.trials = plan.trials[1:]  # one trial: the head=none variant
    results, _, _ = run_sweep(s, plan)
    assert not results.errors and len(results) == 1
    assert results[0].metrics["step"] == 4 and results[0].metrics["probe/attentive_top1"] >= 0
