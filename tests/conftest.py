"""Session-wide test setup: quiet, local-only Ray and MLflow; one shared local Ray cluster."""

from __future__ import annotations

import contextlib
import os

import pytest

from pipelines.data.raytools import LOCAL_RAY_ENV

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray cluster (2 CPUs, dashboard on 127.0.0.1), shared by every Ray test in the session."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            dashboard_host="127.0.0.1",
            _node_ip_address="127.0.0.1",
            include_dashboard=True,
            log_to_driver=False,
            runtime_env={"env_vars": LOCAL_RAY_ENV},
        )
    yield ray
    ray.shutdown()


@contextlib.contextmanager
def moto_without_auth():
    """Turn off signature checks of in-process moto servers for a block (tests/data's session endpoint
    turns them on for the rest of the session; a test that uses made-up keys needs them off)."""
    from moto import settings

    old = settings.INITIAL_NO_AUTH_ACTION_COUNT
    settings.INITIAL_NO_AUTH_ACTION_COUNT = float("inf")
    try:
        yield
    finally:
        settings.INITIAL_NO_AUTH_ACTION_COUNT = old


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """Small demo pool + curated set written by the real `write_demo` (local directory)."""
    from pipelines.data.demo import write_demo

    out = tmp_path_factory.mktemp("demo-data")
    summary = write_demo(str(out), shards=2, per_shard=120, curated_train=300, curated_test=200, size=32)
    return summary


def experiment(demo, tmp_path, name: str, **sections) -> dict:
    """An aim-test experiment on the demo data, local storage and a SQLite MLflow under tmp_path."""
    base = {
        "name": name,
        "seed": 0,
        "model": {"preset": "aim-test", "img_size": 16},
        "data": {
            "pool": {"uri": demo.pool_uri, "top_fraction": 0.5},
            "curated": {"uri": demo.curated_uri},
            "max_bad_fraction": 0.2,
            "decode": {"num_cpus": 0.25, "concurrency": 1},
        },
        "optim": {"batch_size": 16, "lr": 2e-2},
        "schedule": {"steps": 12, "warmup_fraction": 0.1},
        "scaling": {"num_workers": 1, "cpus_per_worker": 0.5, "shuffle_buffer": 64},
        "storage": {"path": str(tmp_path / "runs"), "checkpoint_every": 6},
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "test", "log_every": 1},
        "probe": {"epochs": 30, "batch_size": 64, "lr": 3e-3},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return base
