"""Every YAML under experiments/ parses (experiments and sweeps), and the paper grid plans without running."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.config import load_experiment
from pipelines.sweep.runner import plan_resources
from pipelines.sweep.spec import load_sweep

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((ROOT / "experiments").glob("*.yaml"))
SWEEPS = sorted((ROOT / "experiments" / "ablations").glob("*.yaml"))


def test_there_is_something_to_check():
    assert len(EXPERIMENTS) >= 3 and len(SWEEPS) >= 3


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_experiment_parses(path):
    cfg = load_experiment(path)
    assert cfg.name and cfg.aim_config().num_patches >= 2


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_sweep_parses_and_plans(path):
    spec, trials = load_sweep(path)
    assert len({t.config.name for t in trials}) == len(trials), "trial run names must be unique"
    plan = plan_resources(spec, trials, 2.0)
    assert 1 <= plan.max_concurrent <= len(plan.trials)


def test_paper_grid_covers_the_papers_axes():
    spec, trials = load_sweep(ROOT / "experiments/ablations/paper.yaml")
    assert set(spec.axes) == {"target", "order", "crop_scale", "attention", "head", "head_depth", "head_width", "shape"}
    base = trials[0].config
    assert base.model.preset == "aim-600m" and base.data.pool.uri.startswith("s3://")
    assert base.optim.batch_size == 4096 and base.data.pool.top_fraction == 0.15
    orders = [t for t in trials if t.axis == "order"]
    assert {t.config.aim_config().attention for t in orders} == {"causal"}, "the order ablation is causal"
    shapes = {t.value: t.config.aim_config() for t in trials if t.axis == "shape"}
    p = {k: 12 * c.width**2 * c.depth for k, c in shapes.items()}
    assert abs(p["wide_1536x24"] - p["deep_1024x54"]) / p["wide_1536x24"] < 0.02


def test_paper_grid_dry_run_prints_plan():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.cli",
            "sweep",
            "experiments/ablations/paper.yaml",
            "--dry-run",
            "--cluster-cpus",
            "256",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    assert "max_concurrent_trials=12" in out.stdout + out.stderr
    assert "deep_1024x54" in out.stdout + out.stderr
