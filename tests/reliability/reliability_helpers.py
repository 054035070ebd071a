"""Helpers for tests/reliability: the CLI as a real subprocess, process-session cleanup, a restartable moto S3
endpoint with real authentication, scanning files for a secret, and loop hooks (fault_hooks.py) for a CLI call."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipelines.train.loop import LoopHooks

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable


@contextlib.contextmanager
def cli_pretrain_hooks(hooks: LoopHooks):
    """For a block, in this process only: `pipelines.train.driver.pretrain` called with `hooks`, so a test that
    goes through `aimctl pretrain` (typer's runner) injects them. The CLI looks `pretrain` up at each call."""
    import functools

    import pytest

    from pipelines.train import driver

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(driver, "pretrain", functools.partial(driver.pretrain, hooks=hooks))
        yield


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without credentials or Ray/MLflow addresses; quiet, local-only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_", "RAY_"))}
    env.update(
        RAY_AUTH_MODE="disabled",
        RAY_USAGE_STATS_ENABLED="0",
        MLFLOW_DISABLE_TELEMETRY="true",
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def aimctl(*args: str, cwd: Path, env: dict[str, str], log: Path | None = None) -> subprocess.Popen:
    """`python -m pipelines.cli ARGS` in its own session (so the whole tree can be killed by session id)."""
    out = open(log, "ab") if log else subprocess.PIPE
    return subprocess.Popen(
        [PY, "-m", "pipelines.cli", *args],
        cwd=cwd,
        env=env,
        start_new_session=True,
        stdout=out,
        stderr=subprocess.STDOUT if log else subprocess.PIPE,
    )


def session_pids(sid: int) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
                if os.getsid(int(d.name)) == sid:
                    pids.append(int(d.name))
    return pids


def kill_session(sid: int) -> None:
    """SIGKILL every process of a session this test started (by its id), and wait until none is left."""
    deadline = time.monotonic() + 20
    while (pids := session_pids(sid)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.3)


def write_yaml(path: Path, data) -> Path:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def wait_for(
    predicate,
    timeout: float,
    what: str,
    proc: subprocess.Popen | None = None,
    log: Path | None = None,
    interval: float = 0.1,
):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-4000:] if log else ""
            raise AssertionError(f"process exited ({proc.returncode}) while waiting for {what}\n{tail}")
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def checkpoint_steps(run_dir: Path) -> dict[int, Path]:
    """{step: directory} of the complete checkpoints (meta.json and state.pt) under a local run directory."""
    out = {}
    for d in run_dir.glob("checkpoint_*"):
        with contextlib.suppress(OSError, ValueError):
            if (d / "state.pt").is_file():
                out[json.loads((d / "meta.json").read_text())["step"]] = d
    return out


def secret_hits(root: Path, secrets: list[str], skip: tuple[str, ...] = ()) -> list[str]:
    """Files under `root` (recursively; sockets and such skipped) whose bytes contain any of `secrets`."""
    needles = [s.encode() for s in secrets if s]
    hits = []
    for p in root.rglob("*"):
        if any(part in skip for part in p.parts) or not p.is_file() or p.is_symlink():
            continue
        with contextlib.suppress(OSError):
            data = p.read_bytes()
            hits += [f"{p}: {n.decode()[:4]}..." for n in needles if n in data]
    return hits


@dataclass
class MotoS3:
    """A moto S3 endpoint on 127.0.0.1:PORT that checks signatures, with one IAM user's keys. It can be
    stopped and started again on the same port: moto keeps its state in this process, so objects survive."""

    port: int
    key: str = ""
    secret: str = ""
    server: object = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
                self.server.start()
                break
            except OSError:  # the port is still being released
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        wait_for(lambda: _listening(self.port), 10, "moto to listen")

    def stop(self) -> None:
        self.server.stop()
        self.server = None

    def boto(self, service: str = "s3", key: str | None = None, secret: str | None = None):
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=key or self.key,
            aws_secret_access_key=secret or self.secret,
        )


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def moto_s3(bucket: str, user: str):
    """A started MotoS3 with `bucket` and an IAM user allowed s3:*; signature checks on while it is up."""
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin

    old = settings.INITIAL_NO_AUTH_ACTION_COUNT  # another suite's endpoint may have turned checks on already
    settings.INITIAL_NO_AUTH_ACTION_COUNT = float("inf")
    s3 = MotoS3(free_port())
    s3.start()
    iam = s3.boto("iam", "bootstrap", "bootstrap")
    iam.create_user(UserName=user)
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=json.dumps(policy))
    k = iam.create_access_key(UserName=user)["AccessKey"]
    s3.key, s3.secret = k["AccessKeyId"], k["SecretAccessKey"]
    s3.boto().create_bucket(Bucket=bucket)
    settings.INITIAL_NO_AUTH_ACTION_COUNT, ActionAuthenticatorMixin.request_count = 0, 0
    try:
        yield s3
    finally:
        settings.INITIAL_NO_AUTH_ACTION_COUNT = old
        if s3.server is not None:
            s3.stop()


@contextlib.contextmanager
def aws_env(s3: MotoS3):
    """The S3 keys in this process's environment (where `storage.s3_filesystem` reads them), then restored."""
    names = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
    old = {k: os.environ.get(k) for k in names}
    os.environ.update(AWS_ACCESS_KEY_ID=s3.key, AWS_SECRET_ACCESS_KEY=s3.secret)
    os.environ.pop("AWS_SESSION_TOKEN", None)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
