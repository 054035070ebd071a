"""Guarantees checked without a training run: checkpoint loading is weights_only everywhere, the servers the
project starts bind 127.0.0.1 by default, storage filesystems keep their retry window through pickling and
never write credentials, half-written checkpoints are never picked, wrapped errors reach the user as
one line, and production code names no test switch. (The live halves: test_driver_failure_and_secrets.py,
test_storage_faults.py.)"""

from __future__ import annotations

import ast
import json
import os
import pickle
import subprocess
from pathlib import Path

import pyarrow.fs as pafs
import pytest

pytestmark = pytest.mark.reliability

ROOT = Path(__file__).resolve().parents[2]


def _tracked(*patterns: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", *patterns], cwd=ROOT, capture_output=True, text=True, check=True)
    return [ROOT / p for p in out.stdout.split() if (ROOT / p).is_file()]


def _calls(path: Path, module: str, name: str):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == name
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == module
        ):
            yield node


def _kw(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def test_every_torch_load_is_weights_only():
    files = _tracked("*.py")
    loads = [(p, c) for p in files for c in _calls(p, "torch", "load")]
    assert len(loads) >= 3  # checkpoint.py, target_fit.py, kmeans.py at least
    bad = [
        f"{p.relative_to(ROOT)}:{c.lineno}"
        for p, c in loads
        if not (isinstance(_kw(c, "weights_only"), ast.Constant) and _kw(c, "weights_only").value is True)
    ]
    assert bad == [], f"torch.load without weights_only=True: {bad}"


def test_production_code_reads_no_test_switches():
    """Faults are injected with `LoopHooks` passed in by the tests; nothing outside tests/ names a test switch."""
    needles = ("AIM_TEST_", "AIM_UPDATE_GOLDEN", "test_hooks")
    hits = [
        f"{p.relative_to(ROOT)}: {n}"
        for p in _tracked("pipelines/*.py", "aim_core/*.py", "benchmarks/*.py")
        for n in needles
        if n in p.read_text()
    ]
    assert not hits, hits


def test_local_servers_bind_loopback_by_default():
    for path in _tracked("pipelines/*.py", "pipelines/**/*.py"):
        assert "0.0.0.0" not in path.read_text(), f"{path.relative_to(ROOT)} mentions 0.0.0.0"
        for call in _calls(path, "ray", "init"):
            if _kw(call, "address") is not None and not isinstance(_kw(call, "address"), ast.Constant):
                continue  # connects to an existing cluster
            host, dash = _kw(call, "dashboard_host"), _kw(call, "include_dashboard")
            ok = (isinstance(host, ast.Constant) and host.value == "127.0.0.1") or (
                isinstance(dash, ast.Constant) and dash.value is False
            )
            assert ok, f"{path.relative_to(ROOT)}:{call.lineno}: a local Ray dashboard not bound to 127.0.0.1"
    for script in ("infra/mlflow/server.sh", "infra/mlflow/local_server.sh"):
        assert "${MLFLOW_HOST:-127.0.0.1}" in (ROOT / script).read_text(), script


def test_retry_window_survives_pickling():
    from pipelines import storage
    from pipelines.data.config import S3Config

    for seconds in (0, 1, 8, 30, 300):
        n = storage.retry_attempts(seconds)
        window = 0.025 * (2**n - 2)
        assert seconds <= window <= 2 * seconds + 0.05
    assert S3Config().retry_seconds == 30
    fs, _ = storage.filesystem("s3://b/x", S3Config(endpoint_url="http://127.0.0.1:9", retry_seconds=8))
    back = pickle.loads(pickle.dumps(fs))
    assert isinstance(back, storage.RetryingS3FileSystem) and back.max_attempts == fs.max_attempts == 9
    assert back.endpoint == "http://127.0.0.1:9" and round(back.retry_window) == 13


def test_storage_filesystem_pickles_without_credentials(monkeypatch):
    """Checkpoint / sweep storage: Ray Train and Tune write this filesystem to disk (Tune's tuner.pkl)."""
    from pipelines import storage
    from pipelines.data.config import S3Config

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEYID0001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example-secret-0123456789")
    cfg = S3Config(endpoint_url="http://127.0.0.1:9")
    fs, _ = storage.resolve("s3://bucket/runs", cfg)
    blob = pickle.dumps(fs)
    assert b"example-secret-0123456789" not in blob and b"AKIAEXAMPLEKEYID0001" not in blob
    back = pickle.loads(blob)  # the unpickling process takes the keys from its own environment
    kwargs = pafs.S3FileSystem.__reduce__(back)[1][0]
    assert kwargs["secret_key"] == "example-secret-0123456789" and back.max_attempts == fs.max_attempts
    data_fs, _ = storage.filesystem("s3://bucket/pool", cfg)  # data: handed to Ray tasks in memory only
    assert b"example-secret-0123456789" in pickle.dumps(data_fs)


def test_credentials_hidden_from_ray_restores_them(monkeypatch):
    from pipelines.storage import credentials_hidden_from_ray

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA0")
    with credentials_hidden_from_ray():
        assert "AWS_SECRET_ACCESS_KEY" not in os.environ and "AWS_ACCESS_KEY_ID" not in os.environ
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == "s3cr3t" and os.environ["AWS_ACCESS_KEY_ID"] == "AKIA0"


def test_unregistered_half_written_checkpoint_is_never_picked(tmp_path):
    """A worker or driver killed mid-upload leaves a checkpoint directory Ray Train never registered."""
    from pipelines.config import parse_experiment
    from pipelines.train.driver import latest_checkpoint
    from tests.conftest import experiment

    demo = type("D", (), {"pool_uri": str(tmp_path / "p"), "curated_uri": str(tmp_path / "c")})
    cfg = parse_experiment(experiment(demo, tmp_path, "orphans"))
    run = Path(cfg.storage.path) / "orphans"
    for name, step, state in (("checkpoint_a", 6, b"full"), ("checkpoint_b", 12, b"")):
        (run / name).mkdir(parents=True)
        (run / name / "meta.json").write_text(json.dumps({"step": step}))
        (run / name / "state.pt").write_bytes(state)
    assert latest_checkpoint(cfg)[1]["step"] == 12  # no snapshot (older runs): the highest step
    snap = {"checkpoint_results": [{"checkpoint_dir_name": "checkpoint_a", "metrics": {"step": 6}}]}
    (run / "checkpoint_manager_snapshot.json").write_text(json.dumps(snap))
    path, meta = latest_checkpoint(cfg)
    assert path.endswith("checkpoint_a") and meta["step"] == 6
    # in-process runs (num_workers 0) register nothing: their copy counts once meta.json, written last, is there
    half = run / "checkpoint_local_0000000018"
    half.mkdir()
    (half / "state.pt").write_bytes(b"partial")
    assert latest_checkpoint(cfg)[0].endswith("checkpoint_a")
    (half / "meta.json").write_text(json.dumps({"step": 18}))
    assert latest_checkpoint(cfg)[1]["step"] == 18


def test_wrapped_errors_reach_the_user_as_one_line():
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback
    from ray.train.v2.api.exceptions import WorkerGroupError

    from pipelines.cli_common import user_error
    from pipelines.data.errors import DataError
    from pipelines.train.loop import NonFiniteLoss

    nan = NonFiniteLoss("non-finite loss at step 5; last good checkpoint: step 3")
    err = WorkerGroupError("rank 0 failed", {0: UserExceptionWithTraceback(nan, "Traceback ...\nNonFiniteLoss")})
    assert user_error(err) == str(nan)
    annotated = DataError("pool shard '00001': bad\nFailed to apply UDF transform after 1/1 attempts.\nTo change...")
    assert user_error(RuntimeError("wrapper")) is None
    try:
        raise RuntimeError("task failed") from annotated
    except RuntimeError as e:
        assert user_error(e) == "pool shard '00001': bad"
    text_only = RuntimeError(
        "ray::MapBatches(run)\n  File x\npipelines.data.errors.DataError: /p/00001.parquet: "
        "no column 'key'\n\nThe above exception was the direct cause of ..."
    )
    assert user_error(text_only) == "/p/00001.parquet: no column 'key'"
