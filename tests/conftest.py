"""Session-wide test setup: quiet, local-only Ray and MLflow; one shared local Ray cluster."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray cluster (2 CPUs, dashboard on 127.0.0.1), shared by every Ray test in the session."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, dashboard_host="127.0.0.1", _node_ip_address="127.0.0.1", include_dashboard=True,
                 log_to_driver=False,
                 runtime_env={"env_vars": {"RAY_USAGE_STATS_ENABLED": "0"}})
    yield ray
    ray.shutdown()
