"""Ray Tune sweeps end to end: parent + child MLflow runs, report files, kill and --resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipelines import tracking
from pipelines.sweep.spec import load_sweep
from tests.conftest import experiment

pytestmark = pytest.mark.ray


def _sweep_file(demo, tmp_path: Path, name: str, steps: int, workers: int = 1) -> Path:
    base = experiment(
        demo,
        tmp_path,
        "unused",
        schedule={"steps": steps},
        storage={"checkpoint_every": 5},
        scaling={"num_workers": workers, "cpus_per_worker": 0.25},
        probe={"epochs": 5, "batch_size": 64, "lr": 3e-3},
    )
    base.pop("name")
    spec = {
        "name": name,
        "experiment": base,
        "mode": "one_at_a_time",
        "axes": {"target": {"norm_pixel": {"target.name": "norm_pixel"}, "pixel": {"target.name": "pixel"}}},
        "resources": {"cpus_per_trial": 0.25},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _children(uri: str, name: str):
    c = tracking.client(uri)
    exp = c.get_experiment_by_name("test")
    parents = c.search_runs([exp.experiment_id], filter_string=f"tags.`aim.run_key` = 'sweep:{name}'")
    assert len(parents) == 1, f"expected one parent run, got {len(parents)}"
    kids = c.search_runs([exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")
    return parents[0], kids


def test_planning_dedups_base_value(demo_data, tmp_path):
    spec, trials = load_sweep(_sweep_file(demo_data, tmp_path, "plan", 4))
    assert [t.trial_id for t in trials] == ["base", "target=norm_pixel", "target=pixel"]
    assert [t.duplicate_of for t in trials] == [None, "base", None]
    assert trials[2].config.target.name == "pixel" and trials[2].config.tags["axis"] == "target"


def test_planning_dedups_on_the_resolved_config(demo_data, tmp_path):
    """`head: mlp` on a preset whose head is already mlp, or the same config reached from two axes, runs once."""
    path = _sweep_file(demo_data, tmp_path, "dups", 4)
    spec = yaml.safe_load(path.read_text())
    spec["axes"] = {
        "head": {"mlp": {"model.head": "mlp"}, "none": {"model.head": "none"}},
        "shape": {"narrow": {"model.head": "none"}},
    }
    path.write_text(yaml.safe_dump(spec))
    _, trials = load_sweep(path)
    assert {t.trial_id: t.duplicate_of for t in trials} == {
        "base": None,
        "head=mlp": "base",
        "head=none": None,
        "shape=narrow": "head=none",
    }


def test_two_trial_sweep_end_to_end(ray_local, demo_data, tmp_path):
    from pipelines.sweep.report import write_report
    from pipelines.sweep.runner import plan_resources, run_sweep

    spec, trials = load_sweep(_sweep_file(demo_data, tmp_path, "e2e", 6))
    plan = plan_resources(spec, trials, 2.0)
    assert len(plan.trials) == 2 and plan.max_concurrent == 2
    results, uri, parent = run_sweep(spec, plan)
    assert not results.errors
    parent_run, kids = _children(uri, "e2e")
    assert sorted(k.data.tags["trial"] for k in kids) == ["base", "target=pixel"]
    for k in kids:
        assert k.info.status == "FINISHED"
        assert {"train/loss", "probe/attentive_top1", "probe/linear_top1"} <= set(k.data.metrics)
        assert k.data.tags["sweep"] == "e2e"
    rows, out = write_report(uri, "e2e", tmp_path / "report")
    assert {r.value for r in rows} == {"base", "norm_pixel", "pixel"}
    assert all(r.attentive_top1 is not None for r in rows)
    for name in ("report.md", "report.html", "axis_target.png", "loss_vs_attentive.png"):
        assert (out / name).stat().st_size > 0
    arts = {a.path for a in tracking.client(uri).list_artifacts(parent, "report")}
    assert "report/report.md" in arts


def test_sweep_without_a_tracking_uri_uses_the_drivers_store(ray_local, demo_data, tmp_path, monkeypatch):
    """`tracking.uri` unset (as in experiments/cifar10-tiny.yaml): every process of the sweep uses the
    driver's <cwd>/mlflow.db, although Tune runs each trial's actor in the trial's own directory and Ray's
    workers in another (found by running search-cpu.yaml: each trial failed reading its run back)."""
    from pipelines.sweep.runner import plan_resources, run_sweep

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    path = _sweep_file(demo_data, tmp_path, "nouri", 4, workers=0)
    spec_yaml = yaml.safe_load(path.read_text())
    del spec_yaml["experiment"]["tracking"]["uri"]
    path.write_text(yaml.safe_dump(spec_yaml))
    spec, trials = load_sweep(path)
    results, uri, _ = run_sweep(spec, plan_resources(spec, trials, 2.0))
    assert not results.errors, [str(e)[:300] for e in results.errors]
    assert uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    _, kids = _children(uri, "nouri")
    assert sorted(k.data.tags["trial"] for k in kids) == ["base", "target=pixel"]
    assert all(k.info.status == "FINISHED" and "train/loss" in k.data.metrics for k in kids)
    assert all(r.metrics["step"] == 4 for r in results)  # the trials' final reads found their runs


def _aimctl(*args, env=None, **kw):
    return subprocess.Popen([sys.executable, "-m", "pipelines.cli", *args], env=env, start_new_session=True, **kw)


@pytest.mark.parametrize("workers", [1, 0], ids=["worker-group", "in-process"])
def test_killed_sweep_resumes_without_duplicate_runs(ray_local, demo_data, tmp_path, workers):
    """SIGKILL the sweep driver (`aimctl sweep`, attached to the running cluster) once a trial has
    checkpointed; `--resume` finishes every trial, with exactly one child run per trial. Trials with a Ray
    Train worker group, and in-process trials (num_workers 0) that persist their own checkpoints."""
    path = _sweep_file(demo_data, tmp_path, "killed", 40, workers)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    log = open(tmp_path / "first.log", "w")
    proc = _aimctl("sweep", str(path), env=env, stdout=log, stderr=subprocess.STDOUT)
    runs = tmp_path / "runs"
    deadline = time.time() + 300
    while time.time() < deadline and not any(runs.glob("killed-*/checkpoint_*/meta.json")):
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        time.sleep(1)
    assert any(runs.glob("killed-*/checkpoint_*/meta.json")), "no trial checkpoint appeared"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    second = _aimctl(
        "sweep", str(path), "--resume", env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    out, _ = second.communicate(timeout=600)
    assert second.returncode == 0, out[-3000:]
    _, kids = _children(uri, "killed")
    assert sorted(k.data.tags["trial"] for k in kids) == ["base", "target=pixel"], "exactly one child per trial"
    c = tracking.client(uri)
    for k in kids:
        steps = [m.step for m in c.get_metric_history(k.info.run_id, "train/loss")]
        assert sorted(steps) == list(range(1, 41)), "no doubled or missing steps after the resume"
        assert k.info.status == "FINISHED"
