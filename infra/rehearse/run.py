"""Runs on the rehearsal cluster: the experiment (aim-test on demo data, checkpoints on S3, MLflow on the
server), `aimctl` as the driver on the head (a subprocess), and what MLflow and S3 hold afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from infra.rehearse.services import Services

ROOT = Path(__file__).resolve().parents[2]  # the repository
SLOT = "rehearsal_gpu"  # the logical stand-in for a GPU node's GPUs (torch here is CPU-only)


def experiment(demo, services: Services, name: str, **sections) -> dict:
    """aim-test on demo data; checkpoints on the S3 endpoint, MLflow on the server: what nodes must share."""
    base = {
        "name": name,
        "seed": 0,
        "model": {"preset": "aim-test", "img_size": 16},
        "data": {
            "pool": {"uri": demo.pool_uri, "top_fraction": 1.0},
            "curated": {"uri": demo.curated_uri},
            "max_bad_fraction": 0.2,
            "decode": {"num_cpus": 0.25, "concurrency": 1},
            "s3": {"endpoint_url": services.s3_endpoint},
        },
        "optim": {"batch_size": 16, "lr": 2e-2},
        "schedule": {"steps": 40, "warmup_fraction": 0.1},
        "scaling": {
            "num_workers": 2,
            "cpus_per_worker": 0.5,
            "worker_resources": {SLOT: 1},
            "shuffle_buffer": 32,
            "max_failures": 3,
        },
        "storage": {"path": f"s3://{services.bucket}/runs", "checkpoint_every": 5},
        "tracking": {"uri": services.tracking_uri, "experiment": "rehearsal", "log_every": 1},
        "probe": {"enabled": False},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return base


def write(tmp_path: Path, exp: dict) -> str:
    path = tmp_path / f"{exp['name']}.yaml"
    path.write_text(yaml.safe_dump(exp, sort_keys=False))
    return str(path)


def driver_env(services: Services, address: str) -> dict[str, str]:
    """The driver's environment on the head: the cluster's address and what the head's role provides."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_", "RAY_ADDRESS"))}
    env.update(services.node_env(), RAY_ADDRESS=address, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    env["PYTHONPATH"] = str(ROOT)
    return env


def aimctl(*args: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", *args],
        cwd=ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen, log: Path, timeout_s: float) -> str:
    from infra.rehearse.procs import stop_session

    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        stop_session(proc.pid)
        raise AssertionError(f"driver still running after {timeout_s}s:\n{log.read_text()[-4000:]}") from None
    out = log.read_text()
    assert proc.returncode == 0, f"driver exited {proc.returncode}:\n{out[-4000:]}"
    return out


def run_by_name(c, experiment: str, name: str) -> list:
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return c.search_runs([exp.experiment_id], filter_string=f"tags.`mlflow.runName` = '{name}'")


def history(c, run_id: str, key: str) -> dict[int, float]:
    """{step: value}; fails if any step is in the history twice."""
    hist = c.get_metric_history(run_id, key)
    steps = [m.step for m in hist]
    assert len(steps) == len(set(steps)), f"{key}: steps logged twice: {sorted(s for s in steps if steps.count(s) > 1)}"
    return {m.step: m.value for m in hist}


def last_step(c, experiment: str, name: str) -> int:
    runs = run_by_name(c, experiment, name)
    if not runs:
        return -1
    return int(runs[0].data.metrics.get("train/step", -1))


def checkpoint_steps(services: Services, prefix: str) -> dict[str, int]:
    """{checkpoint dir: step} of the complete checkpoints (meta.json present) under s3://bucket/prefix/."""
    import json

    s3 = services.s3()
    out = {}
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=services.bucket, Prefix=prefix.rstrip("/") + "/")
    for page in pages:
        for obj in page.get("Contents", []):
            if obj["Key"].endswith("/meta.json"):
                meta = json.loads(s3.get_object(Bucket=services.bucket, Key=obj["Key"])["Body"].read())
                out[obj["Key"].rsplit("/", 2)[-2]] = int(meta["step"])
    return out


def registered_checkpoints(services: Services, run_dir: str) -> int:
    """How many checkpoints Ray Train has registered for the run under s3://bucket/<run_dir> (its snapshot).
    A checkpoint counts for an in-run restart only once registered: the controller registers a worker's
    report when it next polls the workers, so a node lost within that window falls back to the one before."""
    import json

    try:
        body = services.s3().get_object(Bucket=services.bucket, Key=f"{run_dir}/checkpoint_manager_snapshot.json")
    except Exception:  # noqa: BLE001 - not written yet
        return 0
    return len(json.loads(body["Body"].read()).get("checkpoint_results", []))
