"""Small Ray helpers: start/attach Ray, and a map-reduce over a list of work items with Ray Data."""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

__all__ = ["ensure_ray", "scan_reduce", "items_dataset"]


def ensure_ray() -> None:
    """Attach to RAY_ADDRESS if set, else start a local Ray (no dashboard, no usage stats)."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        ray.init(include_dashboard=False, runtime_env={"env_vars": {"RAY_USAGE_STATS_ENABLED": "0"}})


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

    if not items:
        raise ValueError("nothing to scan")
    parts = items_dataset(items).map_batches(run, batch_size=None, batch_format="numpy", num_cpus=SCAN_CPUS)
    return _fold(combine, (pickle.loads(row["part"]) for row in parts.iter_rows()))


def _fold(combine: Callable[[Any, Any], Any], parts: Iterable[Any]) -> Any:
    acc, first = None, True
    for p in parts:
        acc, first = (p if first else combine(acc, p)), False
    return acc
