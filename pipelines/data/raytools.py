"""Small Ray helpers: start/attach Ray (`init_ray`, the pipelines' only `ray.init`), and a map-reduce over a
list of work items with Ray Data."""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

__all__ = ["ensure_ray", "init_ray", "scan_reduce", "items_dataset", "tune_ray_data"]


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """The one Ray initialiser (CLI, driver, sweeps, data commands, benchmarks): connect to `address` /
    $RAY_ADDRESS, or start a local Ray (quiet, no usage stats). A no-op once Ray is up."""
    import ray

    from pipelines import quiet

    if ray.is_initialized():
        return
    quiet.route_ray_logs()  # aimctl without -v: Ray's INFO lines go to a log file
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = address or os.environ.get("RAY_ADDRESS")
    to_driver = not quiet.is_quiet()
    if address:
        ray.init(address=address, log_to_driver=to_driver)
    else:  # the dashboard (127.0.0.1) serves the State API that Ray Train polls; without it, warnings
        ray.init(
            num_cpus=num_cpus,
            dashboard_host="127.0.0.1",
            _node_ip_address="127.0.0.1",
            log_to_driver=to_driver,
            runtime_env={"env_vars": LOCAL_RAY_ENV},
        )


# The environment of every worker of a Ray this process starts itself (one machine, nothing to reclaim).
# Ray Train 2.60 starts a PreemptionWatcher actor per worker group to watch for node drains: on a local Ray
# no node is ever drained, and the watcher is one more actor process to start per training (seen at ~1.5
# CPU-s each on 2 cores, imports included). Clusters (an address to connect to) keep it.
LOCAL_RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


def ensure_ray() -> None:
    """`init_ray()` with Ray Data's scheduler tuned (`tune_ray_data`) first: what the data path calls."""
    tune_ray_data()
    init_ray()


# Two Ray Data scheduler constants (Ray 2.60), tuned for short tasks on small machines; see tune_ray_data.
DATA_LIMITS_REFRESH_S = 0.05  # Ray: 1 s
DATA_TASK_WAIT_S = 0.02  # Ray: 0.1 s


def tune_ray_data() -> None:
    """Two settings of Ray Data's streaming executor, for every execution in this process.

    - Limits refresh: an execution learns its CPU/memory limits from Ray Data's autoscaling coordinator
      actor, whose answer arrives asynchronously, and re-reads them once per second. Its first read is
      always empty, so for its first second every execution schedules as if the cluster had no CPUs: one
      task at a time. Measured: a 1.0 s window of zero limits per execution, 0.03 s at 50 ms. The re-read
      is a non-blocking poll of that actor's cached answer.
    - Completion wait: each scheduling step waits up to 0.1 s for *all* running tasks to finish, so a
      worker that finishes its task idles until the step ends before it gets the next one: 0.12-0.2 s
      between consecutive read tasks on a worker (Ray timeline), a third of each worker's time with
      0.35 s tasks. At 20 ms the 224 px ingest runs ~20% faster (884-954 -> 1,078-1,146 images/s,
      3 chained epochs) for ~0.4 CPU-s more in the driver per minute; at 5 ms the driver's polling costs
      more than it saves.
    Measured with benchmarks/data_ingest.py on 2 cores. A Ray without these attributes is left alone."""
    try:
        from ray.data._internal.execution import streaming_executor_state
        from ray.data._internal.execution.resource_manager import ResourceManager
    except ImportError:  # pragma: no cover - a Ray Data that moved its scheduler
        return
    if getattr(ResourceManager, "GLOBAL_LIMITS_UPDATE_INTERVAL_S", 0) > DATA_LIMITS_REFRESH_S:
        ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S = DATA_LIMITS_REFRESH_S
    if getattr(streaming_executor_state, "WAIT_FOR_TASK_COMPLETION_TIMEOUT_S", 0) > DATA_TASK_WAIT_S:
        streaming_executor_state.WAIT_FOR_TASK_COMPLETION_TIMEOUT_S = DATA_TASK_WAIT_S


# CPUs reserved per metadata-scan task: mostly I/O, and small enough to fit beside running trainings (a
# trial holds its driver, worker and one decode task: a 1-CPU scan could wait on them forever on 2 CPUs)
SCAN_CPUS = 0.25


def _num_blocks(n_items: int) -> int:
    import ray

    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(1, min(n_items, 4 * cpus, 4096))


def items_dataset(items: list[dict], num_blocks: int | None = None):
    """A Ray Dataset with one `spec` (JSON) row per work item, split into `num_blocks` blocks."""
    import ray

    rows = [{"spec": json.dumps(item)} for item in items]
    return ray.data.from_items(rows, override_num_blocks=num_blocks or _num_blocks(len(rows)))


def scan_reduce(items: list[dict], per_item: Callable[[dict], Any], combine: Callable[[Any, Any], Any]) -> Any:
    """combine(per_item(item) for every item), computed by Ray Data tasks.

    Each block of items is reduced inside its task; the driver only merges one partial per block, so
    what it receives grows with the number of blocks (<= 4096), not with the data.
    """

    def run(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        acc = _fold(combine, (per_item(json.loads(s)) for s in batch["spec"]))
        return {"part": np.array([pickle.dumps(acc)], dtype=object)}

    import ray
    from ray.data import TaskPoolStrategy

    if not items:
        raise ValueError("nothing to scan")
    # at most one task per CPU: more would each start a fresh worker process (~1 CPU-s apiece), which on a
    # small machine costs more than the metadata reads they overlap
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    parts = items_dataset(items).map_batches(
        run, batch_size=None, batch_format="numpy", num_cpus=SCAN_CPUS, compute=TaskPoolStrategy(size=cpus)
    )
    return _fold(combine, (pickle.loads(row["part"]) for row in parts.iter_rows()))


def _fold(combine: Callable[[Any, Any], Any], parts: Iterable[Any]) -> Any:
    acc, first = None, True
    for p in parts:
        acc, first = (p if first else combine(acc, p)), False
    return acc
