"""Helpers for tests/infra: free ports, a local Ray head started and stopped by process session."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from infra.rehearse.procs import free_port, stop_session  # noqa: F401 - re-exported to the infra tests

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
VENV_BIN = str(Path(PY).parent)


def base_env(**extra: str) -> dict[str, str]:
    """The environment without any real credential or Ray/MLflow address from the caller's shell."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "MLFLOW_", "RAY_")) and k not in ("PGPASSWORD",)
    }
    env.update(
        RAY_AUTH_MODE="disabled",
        RAY_USAGE_STATS_ENABLED="0",
        MLFLOW_DISABLE_TELEMETRY="true",
        PATH=VENV_BIN + os.pathsep + env.get("PATH", ""),
    )
    env.update(extra)
    return env


@contextlib.contextmanager
def ray_head(resources: str = '{"TRAIN_DRIVER": 4}', num_cpus: int = 2):
    """A local head on 127.0.0.1 with free ports; yields the Jobs API address (http://127.0.0.1:PORT).

    `ray stop` would stop every Ray on this machine (other tests', other users'); instead the head is
    started in a new process session and exactly that session's processes are stopped afterwards."""
    tmp = tempfile.mkdtemp(prefix="rayh", dir="/tmp")  # short: Ray's socket paths must fit in 107 chars
    port, dash = free_port(), free_port()
    env = base_env(RAY_TMPDIR=tmp)
    cmd = [
        str(Path(VENV_BIN) / "ray"),
        "start",
        "--head",
        "--node-ip-address",
        "127.0.0.1",
        "--dashboard-host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dashboard-port",
        str(dash),
        "--num-cpus",
        str(num_cpus),
        "--resources",
        resources,
        "--disable-usage-stats",
        "--ray-client-server-port",
        str(free_port()),
        "--temp-dir",
        tmp,
        # the agent's HTTP port defaults to 52365: another Ray on this machine (a test session) may hold it
        "--dashboard-agent-listen-port",
        str(free_port()),
    ]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, cwd=tmp
    )
    sid = proc.pid
    try:
        out, _ = proc.communicate(timeout=90)
        if proc.returncode != 0:
            raise RuntimeError(f"ray start failed:\n{out[-3000:]}")
        address = f"http://127.0.0.1:{dash}"
        _wait_jobs_api(address)
        yield address
    finally:
        stop_session(sid)
        subprocess.run(["rm", "-rf", tmp], check=False)


def _wait_jobs_api(address: str, timeout_s: float = 60) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{address}/api/version", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"Jobs API at {address} not up after {timeout_s}s")
        time.sleep(0.5)


def aimctl(*args: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PY, "-m", "pipelines.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
