"""MLflow helpers: tracking URI, idempotent runs, parameter and batched metric logging."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

__all__ = [
    "resolve_tracking_uri",
    "client",
    "get_or_create_run",
    "log_params",
    "MetricLogger",
    "git_commit",
    "last_logged_step",
    "SECRET_PATTERN",
]

RUN_KEY_TAG = "aim.run_key"
SECRET_PATTERN = re.compile(r"secret|password|token|access_key|session_key|credential", re.I)


def resolve_tracking_uri(uri: str | None = None) -> str:
    """Config value, else $MLFLOW_TRACKING_URI, else an absolute sqlite:///<cwd>/mlflow.db.

    Relative sqlite paths are made absolute (Ray workers run in other directories).
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        rel = uri.removeprefix("sqlite:///")
        uri = f"sqlite:///{Path(rel).resolve()}"
    elif "://" not in uri:
        uri = f"sqlite:///{Path(uri).resolve()}"
    return uri


def client(uri: str):
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    db = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
    if db is None or db in _SQLITE_READY:
        return MlflowClient(tracking_uri=uri)
    # Two processes opening a new SQLite store at once both run MLflow's table creation and migrations, and
    # one fails ("Online migration expected to match one row ...": two `aimctl pretrain` started together on
    # a fresh machine). The first open in a process, which creates the tables if they are missing, runs
    # under a file lock next to the database.
    import fcntl

    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            c = MlflowClient(tracking_uri=uri)
            c.search_experiments(max_results=1)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    _SQLITE_READY.add(db)
    return c


_SQLITE_READY: set[Path] = set()  # databases this process has opened once (their tables exist)


# MLflow 3.17 opens an experiment without this tag on its GenAI overview; with it, on its training runs.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def _experiment_id(c, name: str) -> str:
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return c.create_experiment(name, tags=EXPERIMENT_KIND)
    except Exception:  # created concurrently by another process
        return c.get_experiment_by_name(name).experiment_id


def get_or_create_run(
    c,
    experiment: str,
    run_key: str,
    run_name: str,
    tags: dict[str, str] | None = None,
    parent_run_id: str | None = None,
) -> tuple[str, bool]:
    """The run tagged `aim.run_key=run_key` in `experiment`, created if absent. Returns (run_id, created).

    A rerun of the same command (resume) finds its run instead of duplicating it.
    """
    exp_id = _experiment_id(c, experiment)
    found = c.search_runs([exp_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{run_key}'", max_results=1)
    if found:
        return found[0].info.run_id, False
    all_tags = {RUN_KEY_TAG: run_key, **(tags or {})}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = c.create_run(exp_id, run_name=run_name, tags=all_tags)
    return run.info.run_id, True


def _safe_params(params: dict[str, Any]) -> dict[str, str]:
    return {k: str(v)[:6000] for k, v in params.items() if not SECRET_PATTERN.search(k)}


def log_params(c, run_id: str, params: dict[str, Any]) -> None:
    """Log params in batches of 100; keys that look like credentials are never logged. Idempotent."""
    from mlflow.entities import Param

    existing = c.get_run(run_id).data.params
    items = [Param(k, v) for k, v in _safe_params(params).items() if k not in existing]
    for i in range(0, len(items), 100):
        c.log_batch(run_id, params=items[i : i + 100])


def last_logged_step(c, run_id: str, key: str = "train/loss") -> int:
    hist = c.get_metric_history(run_id, key)
    return max((m.step for m in hist), default=-1)


class MetricLogger:
    """Buffers metrics and sends them with `log_batch`; steps at or below `skip_until` are dropped, so a
    resumed run never doubles a step already in the history."""

    def __init__(self, c, run_id: str, skip_until: int = -1) -> None:
        self.c, self.run_id, self.skip_until = c, run_id, skip_until
        self.buffer: list = []

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        if step <= self.skip_until:
            return
        ts = int(time.time() * 1000)
        self.buffer.extend(Metric(k, float(v), ts, step) for k, v in metrics.items())

    def flush(self) -> None:
        for i in range(0, len(self.buffer), 1000):
            self.c.log_batch(self.run_id, metrics=self.buffer[i : i + 1000])
        self.buffer.clear()


def git_commit(cwd: str | Path | None = None) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
