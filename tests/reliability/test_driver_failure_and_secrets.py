"""The CLI as a user runs it, as real processes on S3 data with S3 credentials in the environment:

1. `aimctl pretrain` is SIGKILLed (its whole process group: the driver and the local Ray it started) once
   Ray Train has registered a checkpoint; the same command again resumes from it. MLflow holds exactly one
   run for the experiment and its metric history has every step once. (The sweep variant, SIGKILL of
   `aimctl sweep` then `--resume`, is tests/sweep/test_sweep.py::test_killed_sweep_resumes_without_duplicate_runs.)
2. `aimctl sweep` and `aimctl report` then run on the same data.
3. Nothing of it leaks a credential: the access key id and the secret are searched for in every MLflow param,
   tag, metric name and artifact (downloaded), the raw MLflow database and artifact store, the Ray job and
   actor/task metadata (with their runtime_env) served by the dashboard while pretrain and the sweep run,
   every log (each command's stdout and
   stderr, and all of Ray's session directories, kept apart with RAY_TMPDIR), and every object the runs
   wrote to the bucket (checkpoints, Ray Train/Tune state such as tuner.pkl).
4. The Ray dashboard the CLI starts listens on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import urllib.request
from pathlib import Path

import pytest
from reliability_helpers import (
    aimctl,
    aws_env,
    clean_env,
    kill_session,
    moto_s3,
    secret_hits,
    session_pids,
    wait_for,
    write_yaml,
)

from pipelines import tracking

pytestmark = [pytest.mark.reliability, pytest.mark.ray]

BUCKET = "aim-rel-secrets"
STEPS = 24


def _experiment(tmp: Path, s3, name: str, **over) -> dict:
    exp = {
        "name": name,
        "seed": 0,
        "model": {"preset": "aim-test", "img_size": 16},
        "data": {
            "pool": {"uri": f"s3://{BUCKET}/demo/pool", "top_fraction": 0.5},
            "curated": {"uri": f"s3://{BUCKET}/demo/curated"},
            "max_bad_fraction": 0.2,
            "decode": {"num_cpus": 0.25, "concurrency": 1},
            "s3": {"endpoint_url": s3.endpoint},
        },
        "optim": {"batch_size": 16, "lr": 2e-2},
        "schedule": {"steps": STEPS, "warmup_fraction": 0.1},
        "scaling": {"num_workers": 1, "cpus_per_worker": 0.5, "shuffle_buffer": 64},
        "storage": {"path": f"s3://{BUCKET}/runs", "checkpoint_every": 6},
        "tracking": {"uri": f"sqlite:///{tmp / 'mlflow.db'}", "experiment": "reliability", "log_every": 1},
        "probe": {"epochs": 5, "batch_size": 64, "lr": 3e-3},
    }
    exp.update(over)
    return exp


def _registered_step(s3, prefix: str) -> int:
    try:
        body = s3.boto().get_object(Bucket=BUCKET, Key=f"{prefix}/checkpoint_manager_snapshot.json")["Body"].read()
        return int(json.loads(body)["latest_checkpoint_result"]["metrics"]["step"])
    except Exception:  # noqa: BLE001 - not there yet
        return 0


def _dashboard_dump(log: Path, out: Path) -> dict:
    """While a command runs: what its Ray dashboard serves about jobs, actors and tasks, and where it listens."""
    url = re.search(r"dashboard at \S*?(http://[0-9.]+:\d+)", log.read_text(errors="replace"))
    if not url:
        return {}
    base = url.group(1)
    texts = []
    for path in (
        "/api/jobs/",
        "/api/v0/actors?detail=true&limit=10000",
        "/api/v0/tasks?detail=true&limit=10000",
        "/api/v0/nodes?detail=true",
    ):
        with urllib.request.urlopen(base + path, timeout=30) as r:
            texts.append(r.read().decode(errors="replace"))
    out.write_text("\n".join(texts))
    port = int(base.rsplit(":", 1)[1])
    return {"url": base, "listen": _listen_addresses(port), "jobs": json.loads(texts[0])}


def _listen_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket LISTENing on `port` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.split(":")
            if int(p, 16) == port and state == "0A":
                found.add("127.0.0.1" if addr == "0100007F" else addr)
    return found


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    from pipelines.data.config import S3Config
    from pipelines.data.demo import write_demo

    tmp = tmp_path_factory.mktemp("cli")
    ray_tmp = Path(tempfile.mkdtemp(prefix="rel", dir="/tmp"))  # short: Ray's socket paths live under it
    out = {"tmp": tmp, "ray_tmp": ray_tmp, "logs": {}}
    dash_dir = out["dash_dir"] = tmp_path_factory.mktemp("dashboard")
    with moto_s3(BUCKET, "rel-secrets") as s3:
        out["s3"] = s3
        with aws_env(s3):
            write_demo(
                f"s3://{BUCKET}/demo",
                shards=2,
                per_shard=120,
                curated_train=300,
                curated_test=200,
                size=32,
                s3=S3Config(endpoint_url=s3.endpoint),
            )
        env = clean_env(AWS_ACCESS_KEY_ID=s3.key, AWS_SECRET_ACCESS_KEY=s3.secret, RAY_TMPDIR=str(ray_tmp))
        exp = write_yaml(tmp / "pretrain.yaml", _experiment(tmp, s3, "killed-driver"))

        # 1. SIGKILL the driver's process group once Ray Train registered a checkpoint, then rerun
        log = out["logs"]["pretrain-killed"] = tmp / "pretrain-killed.log"
        # -v: Ray's INFO lines (the dashboard's address among them) on the console, where the test reads them
        proc = aimctl("-v", "pretrain", str(exp), cwd=tmp, env=env, log=log)
        try:
            out["killed_at"] = wait_for(
                lambda: _registered_step(s3, "runs/killed-driver"),
                900,
                "a registered checkpoint",
                proc=proc,
                log=log,
                interval=0.2,
            )
            out["dashboards"] = [_dashboard_dump(log, dash_dir / "pretrain.json")]
        finally:
            kill_session(proc.pid)
            proc.wait()
        out["leftover"] = session_pids(proc.pid)
        log = out["logs"]["pretrain-rerun"] = tmp / "pretrain-rerun.log"
        proc = aimctl("pretrain", str(exp), cwd=tmp, env=env, log=log)
        out["rerun_rc"] = proc.wait(timeout=900)
        kill_session(proc.pid)

        # 2. a sweep (one trial runs: the axis value equals the base) and its report
        base = _experiment(tmp, s3, "unused", schedule={"steps": 6, "warmup_fraction": 0.1})
        base.pop("name")
        base["storage"] = {"path": f"s3://{BUCKET}/sweep-runs", "checkpoint_every": 3}
        sweep = write_yaml(
            tmp / "sweep.yaml",
            {
                "name": "secrets",
                "experiment": base,
                "mode": "one_at_a_time",
                "axes": {"target": {"norm_pixel": {"target.name": "norm_pixel"}}},
                "resources": {"cpus_per_trial": 0.25},
            },
        )
        log = out["logs"]["sweep"] = tmp / "sweep.log"
        proc = aimctl("-v", "sweep", str(sweep), cwd=tmp, env=env, log=log)
        try:
            # while the trial trains: the dashboard's view of the cluster
            wait_for(
                lambda: _registered_step(s3, "sweep-runs/secrets-base-") or _any_trial_ckpt(s3),
                900,
                "the sweep trial's first checkpoint",
                proc=proc,
                log=log,
                interval=0.5,
            )
            out["dashboards"].append(_dashboard_dump(log, dash_dir / "sweep.json"))
            out["sweep_rc"] = proc.wait(timeout=900)
        finally:
            kill_session(proc.pid)
        log = out["logs"]["report"] = tmp / "report.log"
        proc = aimctl(
            "report",
            "secrets",
            "--tracking-uri",
            f"sqlite:///{tmp / 'mlflow.db'}",
            "--out",
            str(tmp / "report"),
            cwd=tmp,
            env=env,
            log=log,
        )
        out["report_rc"] = proc.wait(timeout=300)

        # every object the runs wrote to the bucket
        objects = tmp / "bucket"
        client = s3.boto()
        for prefix in ("runs/", "sweep-runs/"):
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
                for obj in page.get("Contents", []):
                    if obj["Key"].endswith("/"):
                        continue  # a directory marker
                    dest = objects / obj["Key"]
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(client.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read())
        yield out
    shutil.rmtree(ray_tmp, ignore_errors=True)


def _any_trial_ckpt(s3) -> bool:
    resp = s3.boto().list_objects_v2(Bucket=BUCKET, Prefix="sweep-runs/secrets-")
    return any(o["Key"].endswith("/meta.json") for o in resp.get("Contents", []))


def _tail(out, name: str) -> str:
    return out["logs"][name].read_text(errors="replace")[-4000:]


def test_killed_driver_leaves_nothing_running_and_rerun_resumes(cli):
    assert cli["killed_at"] >= 6 and cli["leftover"] == []
    assert cli["rerun_rc"] == 0, _tail(cli, "pretrain-rerun")
    text = re.sub(r"\s+", " ", cli["logs"]["pretrain-rerun"].read_text(errors="replace"))
    m = re.search(r"pretrain killed-driver: resumed from step (\d+), at step (\d+);", text)
    assert m, _tail(cli, "pretrain-rerun")
    assert int(m.group(1)) >= cli["killed_at"] and int(m.group(2)) == STEPS


def test_killed_driver_one_mlflow_run_and_no_doubled_steps(cli):
    c = tracking.client(f"sqlite:///{cli['tmp'] / 'mlflow.db'}")
    exp = c.get_experiment_by_name("reliability")
    runs = c.search_runs([exp.experiment_id], filter_string="attributes.run_name = 'killed-driver'")
    assert len(runs) == 1, f"{len(runs)} MLflow runs for one experiment"
    assert runs[0].info.status == "FINISHED"
    for key in ("train/loss", "train/lr", "train/step"):
        steps = [m.step for m in c.get_metric_history(runs[0].info.run_id, key)]
        assert sorted(steps) == list(range(1, STEPS + 1)), f"{key}: doubled or missing steps"


def test_sweep_and_report_succeed(cli):
    assert cli.get("sweep_rc") == 0, _tail(cli, "sweep")
    assert cli["report_rc"] == 0, _tail(cli, "report")
    assert (cli["tmp"] / "report" / "report.md").stat().st_size > 0


def test_no_credentials_in_mlflow(cli, tmp_path):
    s3 = cli["s3"]
    c = tracking.client(f"sqlite:///{cli['tmp'] / 'mlflow.db'}")
    runs = [r for e in c.search_experiments() for r in c.search_runs([e.experiment_id])]
    assert len(runs) >= 3  # the pretrain run, the sweep's parent and its trial
    checked = 0
    for run in runs:
        text = json.dumps([run.data.params, run.data.tags, list(run.data.metrics), run.info.run_name])
        assert s3.secret not in text and s3.key not in text, f"credential in run {run.info.run_id}"
        dest = tmp_path / run.info.run_id
        dest.mkdir()
        c.download_artifacts(run.info.run_id, "", str(dest))
        checked += sum(1 for p in dest.rglob("*") if p.is_file())
        assert secret_hits(dest, [s3.secret, s3.key]) == []
    assert checked >= 5  # config.yaml, checkpoint_uri.txt, predictions.png, plan.json, report files


def test_no_credentials_in_files_logs_or_bucket(cli):
    s3 = cli["s3"]
    files = [p for p in cli["tmp"].rglob("*") if p.is_file()]
    assert any(p.name == "mlflow.db" for p in files) and any(p.name == "tuner.pkl" for p in files)
    assert list(cli["ray_tmp"].rglob("*.log")) or list(cli["ray_tmp"].rglob("*.err"))
    assert secret_hits(cli["tmp"], [s3.secret, s3.key]) == []  # MLflow, logs, report, the bucket's objects
    assert secret_hits(cli["ray_tmp"], [s3.secret, s3.key]) == []  # every Ray session dir of every command


def test_no_credentials_in_ray_job_metadata_and_dashboard_on_loopback(cli):
    """Ray Tune copies AWS_* from the driver into every trial actor's runtime_env, which the State API shows:
    `run_sweep` hides them from it (pipelines/storage.py::credentials_hidden_from_ray)."""
    assert len(cli["dashboards"]) == 2 and all(cli["dashboards"]), "a log did not show the dashboard address"
    for dash in cli["dashboards"]:
        assert dash["url"].startswith("http://127.0.0.1:") and dash["listen"] == {"127.0.0.1"}, dash
        assert dash["jobs"], "the dashboard listed no job"
    for name in ("pretrain.json", "sweep.json"):
        text = (cli["dash_dir"] / name).read_text()
        assert "RayTrainWorker" in text  # the dump holds the training actors and their runtime_env
        assert cli["s3"].secret not in text and cli["s3"].key not in text, f"credential in {name}"
