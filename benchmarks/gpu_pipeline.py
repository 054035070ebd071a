"""The whole pipeline on one GPU, in one call: data -> pre-training -> gpu_step -> FSDP checkpoint/resume -> probe.

    python -m benchmarks.gpu_pipeline [--out FILE]     # one GPU: aim-600m, bf16, compiled blocks (~6 min, estimated)
    python -m benchmarks.gpu_pipeline --cpu-smoke      # the same script at tiny size on the CPU (~1.5 min on 2 cores)

Phases, in order (each timed; a failure is recorded with its error and the phases that do not need it go on):

1. `data`: `aimctl data demo` writes JPEG shards into a temp dir: pool images of `--source-size` px scaled
   0.75-1.5 per side (GPU: 384-768 px), a curated set of `--curated-size` px, with the demo's corrupt and
   missing samples (skipped and counted by the pipeline).
2. `pretrain`: the `aimctl pretrain` code path (`pipelines.train.driver.pretrain` on the experiment YAML
   written to the temp dir, plus `--set` overrides) for `--steps` steps: Ray Data decodes and crops
   (GPU: 224 px crops, decode actors on the spare CPUs), one Ray Train worker, bf16, `scaling.compile`,
   strategy ddp (one worker: the plain model, as in gpu_step). images/s and MFU are the medians of the run's
   own MLflow metrics `train/images_per_s` / `train/mfu` over the logged steps after the first
   `--skip-fraction` of the run (compilation and the data pipeline's start).
3. `gpu_step`: `benchmarks/gpu_step.py` in a subprocess at the same preset, batch and compile mode, with
   the attention implementation the pipeline uses (flex on CUDA, sdpa on the CPU); `ratio` = pipeline
   images/s / gpu_step images/s (target >= 0.95 on a GPU).
4. `fsdp`: `scaling.strategy: fsdp` for `--fsdp-steps` steps, stopped half way with a checkpoint
   (`--stop-after`); `fsdp_resume`: the same pretrain again, which must resume from that checkpoint
   (resumed_from > 0) and reach the final step. GPU: 1 worker, the preset's width and heads at reduced
   depth (`--fsdp-set`, default model.depth=4, model.head_depth=2: the checkpoints of the full model are
   13 GB each); CPU smoke: 2 workers over gloo.
5. `probe`: the `aimctl probe` code path (features on the GPU when there is one, small probe sizes) on the
   latest checkpoint of the FSDP run, trained and resumed above (a sharded run's full state dict loaded
   into a plain model); `--probe-run main` probes the pre-training run instead (on the GPU it reads
   aim-600m's 13 GB checkpoint once more, about half a minute).

Prints one JSON document on stdout (progress on stderr) with every figure, the GPU, versions, the
commands and config, per-phase wall times and errors; `--out FILE` also rewrites FILE after every phase.
Exit status 1 if any phase failed. The temp dir is removed at the end unless `--keep`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
RATIO_TARGET = 0.95
PHASES = ("data", "pretrain", "gpu_step", "fsdp", "fsdp_resume", "probe")
NEEDS = {"pretrain": ("data",), "fsdp": ("data",), "fsdp_resume": ("fsdp",)}  # probe: see probe_needs


@dataclasses.dataclass
class Profile:
    """Everything that differs between the GPU run and the CPU smoke run."""

    mode: str
    preset: str
    source_size: int
    curated_size: int
    shards: int
    per_shard: int
    curated_train: int
    curated_test: int
    batch: int
    steps: int
    log_every: int
    use_gpu: bool
    precision: str
    compile: bool
    cpus_per_worker: float
    threads_per_worker: int | None
    decode: dict
    ray_cpus: int | None
    fsdp_workers: int
    fsdp_cpus_per_worker: float
    fsdp_steps: int
    fsdp_sets: list[str]
    probe: dict
    gpu_step_steps: int
    gpu_step_warmup: int


def gpu_profile() -> Profile:
    """aim-600m at 224 px on one GPU; Ray Data decode actors on the CPUs the trainer does not take."""
    cpus = os.cpu_count() or 8
    trainer_cpus = 4
    return Profile(
        mode="gpu",
        preset="aim-600m",
        source_size=512,
        curated_size=384,
        shards=4,
        per_shard=200,
        curated_train=256,
        curated_test=128,
        batch=128,
        steps=200,
        log_every=10,
        use_gpu=True,
        precision="bf16",
        compile=True,
        cpus_per_worker=trainer_cpus,
        threads_per_worker=None,
        decode={
            "compute": "actors",
            "concurrency": max(1, cpus - trainer_cpus - 1),
            "num_cpus": 1.0,
            "batch_size": 256,
        },
        ray_cpus=None,
        fsdp_workers=1,
        fsdp_cpus_per_worker=trainer_cpus,
        fsdp_steps=4,
        fsdp_sets=["model.depth=4", "model.head_depth=2"],
        probe={"train_limit": 256, "test_limit": 128, "epochs": 3, "batch_size": 64},
        gpu_step_steps=20,
        gpu_step_warmup=3,
    )


def cpu_smoke_profile() -> Profile:
    """aim-test (16 px crops) from 36-72 px sources on 2 CPU cores; FSDP over gloo with 2 workers."""
    return Profile(
        mode="cpu-smoke",
        preset="aim-test",
        source_size=48,
        curated_size=32,
        shards=2,
        per_shard=60,
        curated_train=100,
        curated_test=60,
        batch=16,
        steps=12,
        log_every=1,
        use_gpu=False,
        precision="fp32",
        compile=False,
        cpus_per_worker=0.5,
        threads_per_worker=1,
        decode={"num_cpus": 0.25, "concurrency": 1},
        ray_cpus=2,
        fsdp_workers=2,
        fsdp_cpus_per_worker=0.5,
        fsdp_steps=4,
        fsdp_sets=[],
        probe={"train_limit": 64, "test_limit": 32, "epochs": 2, "batch_size": 32},
        gpu_step_steps=3,
        gpu_step_warmup=1,
    )


def log(*a: Any) -> None:
    print("[gpu_pipeline]", *a, file=sys.stderr, flush=True)


def err_str(e: BaseException) -> str:
    s = f"{type(e).__name__}: {e}"
    return s if len(s) < 1500 else s[:1500] + " ..."


class CheckFailed(RuntimeError):
    """A phase ran but its result is not what it must be (steps reached, resume happened)."""


def experiment_dict(p: Profile, work: Path, pool: str, curated: str) -> dict:
    """The base experiment (the main pre-training run); the other phases apply `--set` overrides to it."""
    return {
        "name": "gpu-pipeline",
        "seed": 0,
        "model": {"preset": p.preset},
        "target": {"name": "norm_pixel"},
        "data": {
            "pool": {"uri": pool, "dedup": True, "top_fraction": 0.7},
            "curated": {"uri": curated},
            "max_bad_fraction": 0.05,
            "decode": dict(p.decode),
        },
        "optim": {"batch_size": p.batch, "lr": 6.25e-5 if p.use_gpu else 2e-2},
        "schedule": {"steps": p.steps, "warmup_fraction": 0.05},
        "scaling": {
            "num_workers": 1,
            "use_gpu": p.use_gpu,
            "cpus_per_worker": p.cpus_per_worker,
            "strategy": "ddp",
            "precision": p.precision,
            "compile": p.compile,
            "max_failures": 0,
            **({"threads_per_worker": p.threads_per_worker} if p.threads_per_worker else {}),
        },
        "storage": {"path": str(work / "runs"), "checkpoint_every": p.steps, "keep": 1},
        "tracking": {"uri": f"sqlite:///{work / 'mlflow.db'}", "experiment": "gpu-pipeline", "log_every": p.log_every},
        "probe": dict(p.probe),
    }


def fsdp_sets(p: Profile) -> list[str]:
    half = max(1, p.fsdp_steps // 2)
    return [
        "name=gpu-pipeline-fsdp",
        "scaling.strategy=fsdp",
        f"scaling.num_workers={p.fsdp_workers}",
        f"scaling.cpus_per_worker={p.fsdp_cpus_per_worker}",
        f"schedule.steps={p.fsdp_steps}",
        f"storage.checkpoint_every={half}",
        "storage.keep=2",
        "tracking.experiment=gpu-pipeline-fsdp",
        *p.fsdp_sets,
    ]


def aimctl(*args: str) -> str:
    return shlex.join(["aimctl", *args])


def sets_args(sets: list[str]) -> list[str]:
    return [x for s in sets for x in ("--set", s)]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    rest = [x for x in env.get("PYTHONPATH", "").split(os.pathsep) if x and x != str(ROOT)]
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *rest])
    return env


def gpu_info() -> dict:
    """GPU name and memory from nvidia-smi (no CUDA context in this process before the probe), else torch's."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        name, mem, driver = [x.strip() for x in out.stdout.strip().splitlines()[0].split(",")]
        return {"gpu": name, "gpu_memory": mem, "driver": driver}
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        import torch

        return {"gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def env_info() -> dict:
    import mlflow
    import ray
    import torch

    return {
        **gpu_info(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "ray": ray.__version__,
        "mlflow": mlflow.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }


def phase_data(p: Profile, work: Path) -> dict:
    """`aimctl data demo` in a subprocess: the real CLI."""
    out = work / "data"
    cmd = [
        sys.executable,
        "-m",
        "pipelines.cli",
        "data",
        "demo",
        "--out",
        str(out),
        "--shards",
        str(p.shards),
        "--per-shard",
        str(p.per_shard),
        "--curated-train",
        str(p.curated_train),
        "--curated-test",
        str(p.curated_test),
        "--size",
        str(p.source_size),
        "--curated-size",
        str(p.curated_size),
    ]
    res = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise RuntimeError(f"aimctl data demo exited {res.returncode}: {res.stderr.strip()[-1500:]}")
    demo = json.loads((out / "demo.json").read_text())
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    lo, hi = int(p.source_size * 0.75), int(p.source_size * 1.5)
    return {
        "command": aimctl(*cmd[3:]),
        "pool_uri": demo["pool_uri"],
        "curated_uri": demo["curated_uri"],
        "pool_rows": demo["pool_rows"],
        "curated_rows": demo["curated_rows"],
        "pool_source_px": [lo, hi],
        "curated_source_px": p.curated_size,
        "bytes": size,
        "broken_on_purpose": len(demo["corrupt"]) + len(demo["missing"]),
    }


def steady_points(uri: str, run_id: str, key: str, steps: int, skip_fraction: float) -> list:
    """A metric's logged points after the first `skip_fraction` of the run's steps, by step."""
    from pipelines import tracking

    hist = tracking.client(uri).get_metric_history(run_id, key)
    return [m for m in sorted(hist, key=lambda m: m.step) if m.step > skip_fraction * steps]


def median_value(points: list) -> float | None:
    return statistics.median(m.value for m in points) if points else None


def wall_rate(points: list, batch: int) -> float | None:
    """images/s between the first and last steady points by their MLflow timestamps (logged at each log
    step): unlike `train/images_per_s`, whose windows leave out the logging itself, this counts everything."""
    if len(points) < 2 or points[-1].timestamp <= points[0].timestamp:
        return None
    return (points[-1].step - points[0].step) * batch / ((points[-1].timestamp - points[0].timestamp) / 1e3)


def run_pretrain(yaml_path: Path, sets: list[str], stop_after: int | None = None) -> tuple[Any, Any]:
    """What `aimctl pretrain YAML --set ... [--stop-after N]` does (in this process, on its local Ray)."""
    from pipelines.config import load_experiment
    from pipelines.train.driver import pretrain

    cfg = load_experiment(yaml_path, sets)
    return cfg, pretrain(cfg, stop_after=stop_after, show_progress=False)


def phase_pretrain(p: Profile, yaml_path: Path, skip_fraction: float) -> dict:
    from pipelines import tracking

    cfg, res = run_pretrain(yaml_path, [])
    if res.step != p.steps:
        raise CheckFailed(f"pretrain ended at step {res.step}, not {p.steps}")
    uri = tracking.resolve_tracking_uri(cfg.tracking.uri)
    ips = steady_points(uri, res.run_id, "train/images_per_s", p.steps, skip_fraction)
    mfu = steady_points(uri, res.run_id, "train/mfu", p.steps, skip_fraction)
    metrics = tracking.client(uri).get_run(res.run_id).data.metrics
    return {
        "command": aimctl("pretrain", str(yaml_path)),
        "step": res.step,
        "resumed_from": res.resumed_from,
        "run_id": res.run_id,
        "checkpoint": res.checkpoint_uri,
        "skipped_samples": res.skipped,
        "images_per_s": median_value(ips),
        "mfu": median_value(mfu),
        "images_per_s_range": [min(m.value for m in ips), max(m.value for m in ips)] if ips else None,
        "images_per_s_wall": wall_rate(ips, p.batch),
        "steady_log_points": len(ips),
        "steady_from_step": ips[0].step if ips else None,
        "skip_fraction": skip_fraction,
        "final_loss": metrics.get("train/loss"),
        "attn_impl": "flex" if p.use_gpu else "sdpa",
    }


def gpu_step_cmd(p: Profile, json_out: Path) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.gpu_step",
        "--preset",
        p.preset,
        "--batch-sizes",
        str(p.batch),
        "--steps",
        str(p.gpu_step_steps),
        "--warmup",
        str(p.gpu_step_warmup),
        "--impls",
        "flex" if p.use_gpu else "sdpa",
        "--compile",
        "blocks" if p.compile else "none",
        "--json-out",
        str(json_out),
    ]
    return cmd if p.use_gpu else [*cmd, "--device", "cpu"]


def phase_gpu_step(p: Profile, work: Path) -> dict:
    """benchmarks/gpu_step.py in its own process (its GPU memory is freed when it exits)."""
    json_out = work / "gpu_step.json"
    cmd = gpu_step_cmd(p, json_out)
    res = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=900)
    if res.returncode != 0 or not json_out.is_file():
        raise RuntimeError(f"gpu_step exited {res.returncode}: {res.stderr.strip()[-1500:]}")
    report = json.loads(json_out.read_text())
    if report.get("skipped"):
        raise RuntimeError(f"gpu_step skipped: {report['skipped']}")
    run = report["runs"][0]
    if "images_per_s" not in run:
        raise RuntimeError(f"gpu_step variant failed: {run.get('error')}")
    keep = (
        "attn_impl",
        "compile",
        "batch",
        "images_per_s",
        "mfu",
        "ms_per_step",
        "ms_per_step_range",
        "peak_mem_gib",
        "host_syncs_per_step",
        "warmup_s",
        "final_loss",
    )
    return {
        "command": shlex.join(["python", *cmd[1:]]),
        "device": report.get("device"),
        "measured_bf16_matmul_tflops": report.get("measured_bf16_matmul_tflops"),
        **{k: run.get(k) for k in keep},
    }


def phase_fsdp(p: Profile, yaml_path: Path) -> dict:
    """FSDP for half the steps, ending with a checkpoint (`--stop-after`)."""
    sets, half = fsdp_sets(p), max(1, p.fsdp_steps // 2)
    _, res = run_pretrain(yaml_path, sets, stop_after=half)
    if res.step != half or not res.checkpoint_uri:
        raise CheckFailed(f"fsdp run stopped at step {res.step} (checkpoint {res.checkpoint_uri}), wanted {half}")
    return {
        "command": aimctl("pretrain", str(yaml_path), *sets_args(sets), "--stop-after", str(half)),
        "step": res.step,
        "resumed_from": res.resumed_from,
        "checkpoint": res.checkpoint_uri,
        "workers": p.fsdp_workers,
        "run_id": res.run_id,
    }


def phase_fsdp_resume(p: Profile, yaml_path: Path) -> dict:
    """The same FSDP pretrain again: it must resume from the checkpoint and reach the final step."""
    sets = fsdp_sets(p)
    _, res = run_pretrain(yaml_path, sets)
    out = {
        "command": aimctl("pretrain", str(yaml_path), *sets_args(sets)),
        "step": res.step,
        "resumed_from": res.resumed_from,
        "checkpoint": res.checkpoint_uri,
        "run_id": res.run_id,
    }
    if res.resumed_from <= 0 or res.step != p.fsdp_steps:
        raise CheckFailed(
            f"resume: resumed_from {res.resumed_from}, final step {res.step} (wanted > 0 and {p.fsdp_steps}); {out}"
        )
    return out


def probe_sets(p: Profile, probe_run: str) -> list[str]:
    """`fsdp`: the FSDP run trained and resumed above (a sharded run's checkpoint into a plain model);
    `main`: the pre-training run (aim-600m on the GPU: reads its 13 GB checkpoint once more)."""
    return fsdp_sets(p) if probe_run == "fsdp" else []


def probe_needs(probe_run: str) -> tuple[str, ...]:
    return ("fsdp_resume",) if probe_run == "fsdp" else ("pretrain",)


def phase_probe(yaml_path: Path, sets: list[str]) -> dict:
    """What `aimctl probe YAML [--set ...]` does: the run's latest checkpoint, features on the GPU if any."""
    from pipelines.config import load_experiment
    from pipelines.probe_runner import probe_checkpoint, probe_device

    cfg = load_experiment(yaml_path, sets)
    res = probe_checkpoint(cfg, None, device="auto")
    return {
        "command": aimctl("probe", str(yaml_path), *sets_args(sets)),
        "run": cfg.name,
        "device": str(probe_device("auto")),
        "attentive_top1": res.attentive_top1,
        "linear_top1": res.linear_top1,
        "num_train": res.num_train,
        "num_test": res.num_test,
        "blocks": res.blocks,
    }


class Report:
    """The JSON document, rewritten to `--out` after every phase."""

    def __init__(self, out: str | None, doc: dict) -> None:
        self.out, self.doc = out, doc

    def dump(self) -> None:
        if self.out:
            tmp = self.out + ".tmp"
            Path(tmp).write_text(json.dumps(self.doc, indent=2))
            os.replace(tmp, self.out)

    def run(self, name: str, wanted: set[str], fn: Callable[[], dict], needs: tuple[str, ...] | None = None) -> None:
        """Run phase `name` if wanted and the phases it needs (default `NEEDS`) went well, else record why not."""
        phases = self.doc["phases"]
        if name not in wanted:
            return
        needs = NEEDS.get(name, ()) if needs is None else needs
        missing = [d for d in needs if phases.get(d, {}).get("status") != "ok"]
        if missing:
            phases[name] = {"status": "skipped", "reason": f"needs {', '.join(missing)}"}
            self.dump()
            return
        log(f"phase {name} ...")
        t0 = time.perf_counter()
        try:
            phases[name] = {"status": "ok", **fn()}
        except Exception as e:  # noqa: BLE001 - recorded; the phases that do not need it go on
            phases[name] = {"status": "failed", "error": err_str(e), "traceback_tail": traceback.format_exc()[-3000:]}
            user = _user_error(e)
            if user:
                phases[name]["user_error"] = user
        phases[name]["wall_s"] = round(time.perf_counter() - t0, 1)
        log(f"phase {name}: {phases[name]['status']} in {phases[name]['wall_s']} s")
        self.dump()


def _user_error(e: BaseException) -> str | None:
    from pipelines.cli_common import user_error

    try:
        return user_error(e)
    except Exception:  # noqa: BLE001 - best effort
        return None


def figures(phases: dict) -> dict:
    """The headline numbers, from the phases that ran."""
    pre, step = phases.get("pretrain", {}), phases.get("gpu_step", {})
    fs, fr, pr = phases.get("fsdp", {}), phases.get("fsdp_resume", {}), phases.get("probe", {})
    ratio = None
    if pre.get("images_per_s") and step.get("images_per_s"):
        ratio = round(pre["images_per_s"] / step["images_per_s"], 4)
    wall = pre.get("images_per_s_wall")
    ratio_wall = round(wall / step["images_per_s"], 4) if wall and step.get("images_per_s") else None
    return {
        "pipeline_images_per_s": pre.get("images_per_s"),
        "pipeline_mfu": pre.get("mfu"),
        "pipeline_images_per_s_wall": wall,
        "ratio_wall": ratio_wall,
        "gpu_step_images_per_s": step.get("images_per_s"),
        "gpu_step_mfu": step.get("mfu"),
        "ratio": ratio,
        "ratio_target": RATIO_TARGET,
        "ratio_met": None if ratio is None else ratio >= RATIO_TARGET,
        "pretrain_step": pre.get("step"),
        "fsdp_stopped_at": fs.get("step"),
        "fsdp_resumed_from": fr.get("resumed_from"),
        "fsdp_final_step": fr.get("step"),
        "probe_attentive_top1": pr.get("attentive_top1"),
        "probe_linear_top1": pr.get("linear_top1"),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny run on the CPU (aim-test, fp32, no compile)")
    ap.add_argument("--steps", type=int, help="pre-training steps (GPU 200, smoke 12)")
    ap.add_argument("--batch-size", type=int, help="global batch (GPU 128, smoke 16)")
    ap.add_argument("--log-every", type=int, help="MLflow logging interval in steps (GPU 10, smoke 1)")
    ap.add_argument(
        "--skip-fraction", type=float, default=0.2, help="leading fraction of the run left out of the medians"
    )
    ap.add_argument("--source-size", type=int, help="pool source image size in px (GPU 512 -> 384-768 px)")
    ap.add_argument("--per-shard", type=int, help="pool images per shard (GPU 200 x 4 shards)")
    ap.add_argument("--fsdp-steps", type=int, help="FSDP phase steps, checkpoint half way (default 4)")
    ap.add_argument("--fsdp-workers", type=int, help="FSDP phase workers (GPU 1, smoke 2)")
    ap.add_argument(
        "--fsdp-set",
        action="append",
        default=None,
        help="override for the FSDP phase (repeatable; replaces the default depth reduction)",
    )
    ap.add_argument("--gpu-step-steps", type=int, help="timed gpu_step steps (GPU 20)")
    ap.add_argument(
        "--probe-run",
        choices=("fsdp", "main"),
        default="fsdp",
        help="whose latest checkpoint the probe phase probes (default: the resumed FSDP run)",
    )
    ap.add_argument("--phases", default=",".join(PHASES), help=f"comma list of {', '.join(PHASES)}")
    ap.add_argument("--workdir", help="parent of the temp dir (default: the system temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (data, checkpoints, mlflow.db)")
    ap.add_argument("--out", help="also write the JSON here (rewritten after every phase)")
    return ap.parse_args(argv)


def profile_from(a: argparse.Namespace) -> Profile:
    p = cpu_smoke_profile() if a.cpu_smoke else gpu_profile()
    flags = {
        "steps": a.steps,
        "batch": a.batch_size,
        "log_every": a.log_every,
        "source_size": a.source_size,
        "per_shard": a.per_shard,
        "fsdp_steps": a.fsdp_steps,
        "fsdp_sets": a.fsdp_set,
        "fsdp_workers": a.fsdp_workers,
        "gpu_step_steps": a.gpu_step_steps,
    }
    return dataclasses.replace(p, **{k: v for k, v in flags.items() if v is not None})


def run_phases(p: Profile, a: argparse.Namespace, work: Path, report: Report) -> None:
    from pipelines.data.raytools import init_ray

    wanted = {x for x in a.phases.split(",") if x}
    yaml_path = work / "experiment.yaml"
    report.run("data", wanted, lambda: phase_data(p, work))
    data = report.doc["phases"].get("data", {})
    if data.get("status") == "ok":
        exp = experiment_dict(p, work, data["pool_uri"], data["curated_uri"])
        yaml_path.write_text(yaml.safe_dump(exp, sort_keys=False))
        report.doc["config"]["experiment"] = exp
        report.doc["config"]["fsdp_overrides"] = fsdp_sets(p)
    if wanted & {"pretrain", "fsdp", "fsdp_resume", "probe"}:
        try:
            init_ray(num_cpus=p.ray_cpus)
        except Exception as e:  # noqa: BLE001 - recorded; each Ray phase then fails with its own error
            report.doc["phases"]["ray_init"] = {"status": "failed", "error": err_str(e)}
    report.run("pretrain", wanted, lambda: phase_pretrain(p, yaml_path, a.skip_fraction))
    report.run("gpu_step", wanted, lambda: phase_gpu_step(p, work))
    report.run("fsdp", wanted, lambda: phase_fsdp(p, yaml_path))
    report.run("fsdp_resume", wanted, lambda: phase_fsdp_resume(p, yaml_path))
    report.run("probe", wanted, lambda: phase_probe(yaml_path, probe_sets(p, a.probe_run)), probe_needs(a.probe_run))


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    unknown = {x for x in a.phases.split(",") if x} - set(PHASES)
    if unknown:
        print(f"--phases: unknown {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    missing = missing_modules()
    if missing:
        print(
            json.dumps(
                {
                    "benchmark": "gpu_pipeline",
                    "ok": False,
                    "error": f"cannot import {', '.join(missing)}: "
                    "install the project's dependencies (pyproject.toml) first",
                }
            )
        )
        return 1
    for var, value in (("RAY_USAGE_STATS_ENABLED", "0"), ("MLFLOW_DISABLE_TELEMETRY", "true")):
        os.environ.setdefault(var, value)
    os.environ["PYTHONPATH"] = subprocess_env()["PYTHONPATH"]  # Ray's workers import this checkout's code too
    p = profile_from(a)
    if p.use_gpu and not _has_cuda():
        print(json.dumps({"benchmark": "gpu_pipeline", "skipped": "no CUDA (--cpu-smoke runs it on the CPU)"}))
        return 0
    start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="gpu_pipeline-", dir=a.workdir))
    try:
        with stdout_to_stderr():  # progress bars and Ray's worker logs: stdout carries the JSON only
            report = Report(
                a.out,
                {
                    "benchmark": "gpu_pipeline",
                    "mode": p.mode,
                    "env": env_info(),
                    "workdir": str(work),
                    "config": {
                        "profile": dataclasses.asdict(p),
                        "skip_fraction": a.skip_fraction,
                        "phases": a.phases,
                        "probe_run": a.probe_run,
                    },
                    "phases": {},
                },
            )
            run_phases(p, a, work, report)
            _shutdown_ray()
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    doc = report.doc
    doc["figures"] = figures(doc["phases"])
    if not p.use_gpu:
        doc["figures"]["ratio_note"] = (
            "CPU smoke: the pipeline trains in fp32, gpu_step's CPU debug path under "
            "bf16 autocast; the ratio only shows both ran"
        )
    doc["failed"] = [n for n, ph in doc["phases"].items() if ph.get("status") != "ok"]
    doc["ok"] = not doc["failed"]
    doc["wall_s"] = round(time.perf_counter() - start, 1)
    report.dump()
    print(json.dumps(doc, indent=2))
    return 0 if doc["ok"] else 1


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send everything written to stdout (file descriptor 1 too, so threads and C code) to stderr."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


REQUIRED = ("torch", "timm", "PIL", "yaml", "pyarrow", "pydantic", "typer", "rich", "mlflow", "ray.train", "ray.data")


def missing_modules() -> list[str]:
    """The project's dependencies this interpreter cannot import (a device image may have torch only)."""
    import importlib

    missing = []
    for name in REQUIRED:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
