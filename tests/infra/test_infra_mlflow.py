"""infra/mlflow: the shared server script for real (SQLite stands in for PostgreSQL, moto for S3): artifacts
proxied to S3, Host allow-list enforced, loopback bind, no secret on the command line or in its log; the
laptop helper; the compose file's structure."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from infra_helpers import base_env, free_port, stop_session

from tests.conftest import moto_without_auth

ROOT = Path(__file__).resolve().parents[2]
MLFLOW_DIR = ROOT / "infra/mlflow"
MLFLOW_BIN = str(Path(os.sys.executable).parent / "mlflow")
FAKE_SECRET = "fake-secret-for-infra-tests-0451"


def _wait_up(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"server not up after {timeout_s}s:\n{log.read_text()[-3000:]}")


def test_server_script_refuses_password_in_uri(tmp_path):
    env = base_env(
        MLFLOW_BACKEND_STORE_URI="postgresql://mlflow:hunter2@db:5432/mlflow", MLFLOW_ARTIFACTS_DESTINATION="s3://b/p"
    )
    out = subprocess.run(
        ["bash", str(MLFLOW_DIR / "server.sh"), "--print-command"], env=env, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 2 and "PGPASSWORD" in out.stderr and "hunter2" not in out.stdout + out.stderr


def test_server_script_command_defaults():
    env = base_env(
        MLFLOW_BACKEND_STORE_URI="postgresql://mlflow@db:5432/mlflow",
        PGPASSWORD=FAKE_SECRET,
        MLFLOW_ARTIFACTS_DESTINATION="s3://bucket/mlflow",
    )
    out = subprocess.run(
        ["bash", str(MLFLOW_DIR / "server.sh"), "--print-command"], env=env, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    cmd = out.stdout.split()
    for flag in ("--serve-artifacts", "--artifacts-destination", "--allowed-hosts", "--backend-store-uri"):
        assert flag in cmd, flag
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--backend-store-uri") + 1].startswith("postgresql://")
    assert FAKE_SECRET not in out.stdout + out.stderr


def test_shared_server_proxies_artifacts_to_s3(tmp_path):
    with moto_without_auth():  # made-up keys: another suite's moto endpoint may have turned signature checks on
        _shared_server_proxies_artifacts_to_s3(tmp_path)


def _shared_server_proxies_artifacts_to_s3(tmp_path):
    import boto3
    from moto.server import ThreadedMotoServer

    s3_port, port = free_port(), free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port, verbose=False)
    moto.start()
    endpoint = f"http://127.0.0.1:{s3_port}"
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="AKIAFAKEFAKE0001",
        aws_secret_access_key=FAKE_SECRET,
    )
    s3.create_bucket(Bucket="aim-mlflow")
    env = base_env(
        MLFLOW_BACKEND_STORE_URI=f"sqlite:///{tmp_path}/mlflow.db",
        MLFLOW_ARTIFACTS_DESTINATION="s3://aim-mlflow/artifacts",
        MLFLOW_PORT=str(port),
        MLFLOW_WORKERS="1",
        MLFLOW_BIN=MLFLOW_BIN,
        AWS_ENDPOINT_URL=endpoint,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ACCESS_KEY_ID="AKIAFAKEFAKE0001",
        AWS_SECRET_ACCESS_KEY=FAKE_SECRET,
    )
    log = tmp_path / "server.log"
    proc = subprocess.Popen(
        ["bash", str(MLFLOW_DIR / "server.sh")],
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=tmp_path,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_up(url, proc, log)
        from mlflow import MlflowClient

        # the client side has no S3 credentials at all: artifacts go through the server
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert k not in os.environ or os.environ[k] != FAKE_SECRET
        c = MlflowClient(url)
        run = c.create_run(c.create_experiment("infra-test"))
        art = tmp_path / "note.txt"
        art.write_text("hello")
        c.log_artifact(run.info.run_id, str(art))
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="aim-mlflow").get("Contents", [])]
        assert any(k.startswith("artifacts/") and k.endswith("/note.txt") for k in keys), keys
        req = urllib.request.Request(
            url + "/api/2.0/mlflow/experiments/search?max_results=1", headers={"Host": "attacker.example"}
        )
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=5)
        assert e.value.code == 403
        ps = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
        assert "--serve-artifacts" in ps and FAKE_SECRET not in ps, "secrets must not be on a command line"
    finally:
        stop_session(proc.pid)
        moto.stop()
    text = log.read_text()
    assert FAKE_SECRET not in text


def test_local_server_helper(tmp_path):
    port = free_port()
    log = tmp_path / "local.log"
    proc = subprocess.Popen(
        ["bash", str(MLFLOW_DIR / "local_server.sh"), str(port), str(tmp_path / "store")],
        env=base_env(MLFLOW_BIN=MLFLOW_BIN),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait_up(f"http://127.0.0.1:{port}", proc, log)
        assert (tmp_path / "store/mlflow.db").exists()
        out = Path(f"/proc/{proc.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()  # exec'd mlflow
        assert "server --host 127.0.0.1" in out and "--workers 1" in out and "sqlite:///" in out, out
    finally:
        stop_session(proc.pid)


def test_compose_file():
    c = yaml.safe_load((MLFLOW_DIR / "compose.yaml").read_text())
    pg, ml = c["services"]["postgres"], c["services"]["mlflow"]
    assert pg["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    assert "ports" not in pg, "the database is not published"
    assert ml["ports"] == ["${MLFLOW_BIND:-127.0.0.1}:${MLFLOW_PORT:-5000}:5000"]
    env = ml["environment"]
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://") and "@" in env["MLFLOW_BACKEND_STORE_URI"]
    assert ":" not in env["MLFLOW_BACKEND_STORE_URI"].split("//")[1].split("@")[0], "no password in the URI"
    assert env["MLFLOW_ARTIFACTS_DESTINATION"].startswith("${MLFLOW_ARTIFACTS_DESTINATION:?")
    assert env["AWS_SECRET_ACCESS_KEY"] is None, "credentials pass through by name only"
    dockerfile = (MLFLOW_DIR / "Dockerfile").read_text()
    assert "mlflow==3.17.2" in dockerfile and "psycopg2-binary==" in dockerfile
