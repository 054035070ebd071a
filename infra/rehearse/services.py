"""What every node of a cluster must share, as real servers on 127.0.0.1: an S3 endpoint (moto's server,
for checkpoints and Tune state) and an MLflow tracking server (a local path or an SQLite file would not be
shared between machines)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from infra.rehearse.procs import free_port, stop_session, wait_for

BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Services:
    s3_endpoint: str
    bucket: str
    tracking_uri: str

    def node_env(self) -> dict[str, str]:
        """What a cloud node gets from its environment: the endpoint and (made-up) keys of its role."""
        return {
            "AWS_ENDPOINT_URL": self.s3_endpoint,
            "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "AKIAREHEARSAL0000001",
            "AWS_SECRET_ACCESS_KEY": "rehearsal-secret-not-real",
        }

    def s3(self):
        import boto3

        env = self.node_env()
        return boto3.client(
            "s3",
            endpoint_url=self.s3_endpoint,
            region_name=env["AWS_REGION"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        )


def _up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _serve(cmd: list[str], log: Path, health: str, what: str, env: dict | None = None) -> int:
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        wait_for(lambda: proc.poll() is not None or _up(health), 180, what)
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited {proc.returncode}:\n{log.read_text()[-3000:]}")
    except BaseException:
        stop_session(proc.pid)
        raise
    return proc.pid


@contextlib.contextmanager
def shared_services(workdir: Path, bucket: str = "aim-rehearsal") -> Iterator[Services]:
    """moto's S3 server and `mlflow server` (SQLite store, artifacts proxied to a local directory), each its
    own process on a free 127.0.0.1 port; stopped (by process session) on exit."""
    import os

    workdir.mkdir(parents=True, exist_ok=True)
    s3_port, ml_port = free_port(), free_port()
    sids = []
    try:
        moto = [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)]
        sids.append(_serve(moto, workdir / "moto.log", f"http://127.0.0.1:{s3_port}/moto-api/", "moto's S3 server"))
        mlflow = [
            str(BIN / "mlflow"),
            "server",
            "--host=127.0.0.1",
            f"--port={ml_port}",
            "--workers=1",
            f"--backend-store-uri=sqlite:///{workdir / 'mlflow.db'}",
            f"--artifacts-destination={workdir / 'mlflow-artifacts'}",
        ]
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
        url = f"http://127.0.0.1:{ml_port}"
        sids.append(_serve(mlflow, workdir / "mlflow.log", f"{url}/health", "mlflow server", env))
        services = Services(f"http://127.0.0.1:{s3_port}", bucket, url)
        services.s3().create_bucket(Bucket=bucket)
        yield services
    finally:
        for sid in reversed(sids):
            stop_session(sid)
