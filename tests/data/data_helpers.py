"""Helpers for the data tests: configs over the demo data, and the expected selection from numpy."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from pipelines.data.config import DataConfig, S3Config

CIFAR = "/work/shared/data/cifar10"


def demo_config(root: str, s3: S3Config | None = None, **over) -> DataConfig:
    data = {"pool": {"uri": f"{root}/pool"}, "curated": {"uri": f"{root}/curated"}, "max_bad_fraction": 0.05}
    if s3 is not None:
        data["s3"] = s3.model_dump()
    for key, value in over.items():
        node = data
        parts = key.split("__")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return DataConfig.model_validate(data)


def expected_selection(pool_dir: str, top_fraction: float, dedup: bool) -> tuple[float, int]:
    """(threshold, kept rows) computed the slow way: every score on one machine, np.quantile."""
    tables = [pq.read_table(p).to_pylist() for p in sorted(__import__("glob").glob(f"{pool_dir}/*.parquet"))]
    rows = [r | {"shard": i} for i, t in enumerate(tables) for r in t]
    if dedup:
        best: dict[str, tuple] = {}
        for r in rows:
            best[r["uid"]] = min(best.get(r["uid"], (r["shard"], r["key"])), (r["shard"], r["key"]))
        rows = [r for r in rows if best[r["uid"]] == (r["shard"], r["key"])]
    scores = np.array([r["dfn_score"] for r in rows], dtype=np.float32).astype(np.float64)
    threshold = float(np.quantile(scores, 1 - top_fraction))
    return threshold, int((scores >= threshold).sum())
