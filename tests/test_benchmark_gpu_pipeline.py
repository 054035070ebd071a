"""benchmarks/gpu_pipeline.py keeps working between GPU sessions: `--cpu-smoke` runs every phase on the CPU.

The end-to-end test runs the script in its own process (it starts and shuts down its own local Ray, which
must not take the session's shared cluster down) with a hard timeout of 12 min; it took 1 min 44 s to
4 min 32 s on the shared 2-core machine (load averages 5-30).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu_pipeline

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.ray
def test_cpu_smoke_end_to_end(tmp_path):
    out = tmp_path / "gpu_pipeline.json"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    res = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_pipeline", "--cpu-smoke", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=720,
    )
    assert res.returncode == 0, res.stderr[-4000:] + res.stdout[-4000:]
    doc = json.loads(res.stdout)
    assert json.loads(out.read_text()) == doc  # the file is the final document
    assert doc["mode"] == "cpu-smoke" and doc["ok"] and doc["failed"] == []
    phases = doc["phases"]
    assert list(phases) == list(gpu_pipeline.PHASES)
    for name, ph in phases.items():  # FSDP2 over gloo, its checkpoint and resume all work on the CPU
        assert ph["status"] == "ok" and ph["wall_s"] > 0, (name, ph)
    assert phases["data"]["pool_source_px"] == [36, 72] and phases["data"]["pool_rows"] == 120
    assert phases["data"]["command"].startswith("aimctl data demo ")
    pre = phases["pretrain"]
    assert pre["step"] == 12 and pre["resumed_from"] == 0 and pre["steady_log_points"] >= 5
    assert pre["images_per_s"] > 0 and pre["mfu"] is None  # no MFU without a GPU peak
    assert pre["skipped_samples"]  # the demo's broken samples were skipped and counted
    assert phases["gpu_step"]["batch"] == 16 and phases["gpu_step"]["images_per_s"] > 0
    assert phases["fsdp"]["step"] == 2 and phases["fsdp"]["workers"] == 2
    assert phases["fsdp_resume"]["resumed_from"] == 2 and phases["fsdp_resume"]["step"] == 4
    assert "--stop-after 2" in phases["fsdp"]["command"] and "scaling.strategy=fsdp" in phases["fsdp"]["command"]
    fig = doc["figures"]
    assert fig["ratio"] > 0 and fig["ratio"] == pytest.approx(
        fig["pipeline_images_per_s"] / fig["gpu_step_images_per_s"], rel=1e-3
    )
    assert fig["fsdp_resumed_from"] == 2 and fig["fsdp_final_step"] == 4
    assert 0 <= fig["probe_attentive_top1"] <= 100 and 0 <= fig["probe_linear_top1"] <= 100
    assert phases["probe"]["run"] == "gpu-pipeline-fsdp"  # the FSDP run's checkpoint, loaded into a plain model
    assert doc["env"]["torch"] and "gpu" in doc["env"]
    assert doc["config"]["experiment"]["scaling"]["precision"] == "fp32"
    assert not Path(doc["workdir"]).exists()  # removed without --keep


def test_a_failed_phase_is_recorded_and_its_dependents_skipped(tmp_path):
    report = gpu_pipeline.Report(str(tmp_path / "r.json"), {"phases": {}})
    wanted = set(gpu_pipeline.PHASES)

    def boom() -> dict:
        raise RuntimeError("no data today")

    report.run("data", wanted, boom)
    report.run("pretrain", wanted, lambda: {"step": 1})
    report.run("gpu_step", wanted, lambda: {"images_per_s": 10.0})
    report.run("probe", wanted - {"probe"}, lambda: {})  # not asked for: not recorded
    phases = json.loads((tmp_path / "r.json").read_text())["phases"]
    assert phases["data"]["status"] == "failed" and phases["data"]["error"] == "RuntimeError: no data today"
    assert phases["pretrain"] == {"status": "skipped", "reason": "needs data"}
    assert phases["gpu_step"]["status"] == "ok" and "probe" not in phases
    fig = gpu_pipeline.figures(phases)
    assert fig["ratio"] is None and fig["gpu_step_images_per_s"] == 10.0


def test_flags_override_the_profile():
    a = gpu_pipeline.parse_args(["--steps", "300", "--batch-size", "64", "--fsdp-set", "model.depth=24"])
    p = gpu_pipeline.profile_from(a)
    assert (p.mode, p.preset, p.steps, p.batch, p.fsdp_sets) == ("gpu", "aim-600m", 300, 64, ["model.depth=24"])
    assert p.use_gpu and p.compile and p.precision == "bf16" and p.source_size * 0.75 >= 384
    cmd = gpu_pipeline.gpu_step_cmd(p, Path("x.json"))
    assert cmd[cmd.index("--batch-sizes") + 1] == "64" and cmd[cmd.index("--compile") + 1] == "blocks"
    assert "--device" not in cmd and cmd[cmd.index("--impls") + 1] == "flex"
    smoke = gpu_pipeline.profile_from(gpu_pipeline.parse_args(["--cpu-smoke"]))
    assert smoke.fsdp_workers == 2 and not smoke.compile and "--device" in gpu_pipeline.gpu_step_cmd(smoke, Path("x"))


def test_gpu_experiment_and_fsdp_overrides_are_valid_configs(tmp_path):
    """What the GPU run would load, checked here before a device session spends time on it."""
    from pipelines.config import apply_overrides, parse_experiment

    p = gpu_pipeline.gpu_profile()
    base = gpu_pipeline.experiment_dict(p, tmp_path, "/pool", "/curated")
    main = parse_experiment(base)
    assert main.aim_config().img_size == 224 and main.scaling.compile and main.scaling.use_gpu
    assert main.scaling.strategy == "ddp" and main.optim.batch_size == p.batch
    assert main.data.decode.compute == "actors" and main.storage.checkpoint_every == p.steps
    fsdp = parse_experiment(apply_overrides(base, gpu_pipeline.fsdp_sets(p)))
    assert fsdp.scaling.strategy == "fsdp" and fsdp.name != main.name and fsdp.schedule.steps == p.fsdp_steps
    assert fsdp.aim_config().width == main.aim_config().width and fsdp.aim_config().depth == 4


def test_steady_state_figures_from_metric_points():
    from mlflow.entities import Metric

    # logged every 10 steps, batch 8: 10 steps take 1 s (80 images/s) by the timestamps
    points = [Metric("train/images_per_s", v, 1000 * i, 10 * i) for i, v in enumerate([50.0, 90.0, 100.0, 95.0], 1)]
    assert gpu_pipeline.median_value(points[1:]) == 95.0 and gpu_pipeline.median_value([]) is None
    assert gpu_pipeline.wall_rate(points[1:], batch=8) == 80.0
    assert gpu_pipeline.wall_rate(points[:1], batch=8) is None


def test_subprocesses_import_this_checkout_first(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), "/elsewhere"]))
    assert gpu_pipeline.subprocess_env()["PYTHONPATH"].split(os.pathsep) == [str(ROOT), "/elsewhere"]
    monkeypatch.delenv("PYTHONPATH")
    assert gpu_pipeline.subprocess_env()["PYTHONPATH"] == str(ROOT)


def test_missing_dependencies_are_named_in_the_json(monkeypatch, capsys):
    monkeypatch.setattr(gpu_pipeline, "REQUIRED", ("torch", "no_such_module_here"))
    assert gpu_pipeline.main(["--cpu-smoke"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and "no_such_module_here" in doc["error"] and "torch" not in doc["error"]
