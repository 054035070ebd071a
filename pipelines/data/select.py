"""Pool selection on Ray: optional de-duplication by uid, then a score threshold or the top fraction.

Nothing here collects the scores on the driver. Passes over the metadata Parquet (score column only):
1. per-shard counts and the global min/max of valid scores;
2. histogram descent for the exact `np.quantile(scores, 1 - top_fraction)` (`quantile.py`);
3. per-shard count of kept rows (score >= threshold), which the epoch plan needs.
De-duplication groups uids with Ray Data (`groupby("uid").count()`); only the duplicated uids (and their
rows) reach the driver, which keeps the row with the smallest (shard, key) and drops the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines import storage
from pipelines.data import formats
from pipelines.data.config import DataConfig
from pipelines.data.quantile import bin_stats, merge_stats, quantile_linear
from pipelines.data.raytools import SCAN_CPUS, scan_reduce
from pipelines.data.rows import STATUS_OK, RowRules, shard_rows

__all__ = ["ShardCounts", "Selection", "select_pool", "shard_scores"]


@dataclass
class ShardCounts:
    name: str
    rows: int = 0
    duplicates: int = 0
    missing_score: int = 0
    kept: int = 0
    not_downloaded: int = 0  # img2dataset rows whose status is not success: never samples
    outside_subset: int = 0
    not_downloaded_by: dict[str, int] = field(default_factory=dict)  # by status


@dataclass
class Selection:
    """What the selection passes found; `shards` keeps the listing order (sorted by name)."""

    score_column: str
    rule: str  # "threshold" | "top_fraction" | "subset"
    threshold: float  # -inf for "subset" (no score rule)
    top_fraction: float | None
    shards: list[formats.PoolShard]
    counts: dict[str, ShardCounts]
    drop_keys: dict[str, list[str]] = field(default_factory=dict)
    rules: RowRules | None = None
    subset: str | None = None

    def total(self, attr: str) -> int:
        return sum(getattr(c, attr) for c in self.counts.values())

    @property
    def rows_kept(self) -> int:
        return self.total("kept")

    def not_downloaded_by(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.counts.values():
            for r, n in c.not_downloaded_by.items():
                out[r] = out.get(r, 0) + n
        return dict(sorted(out.items()))


def shard_scores(fs, meta_path: str, rules: RowRules, drop: list[str]) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """(table with `key` and the scores as `score`, is_duplicate mask, is_valid mask) for one shard."""
    r = shard_rows(fs, meta_path, rules, drop)
    table = pa.table({"key": r.keys, "score": pa.array(r.scores, pa.float64())})
    return table, r.duplicate, r.valid


def _items(sel_shards: list[formats.PoolShard], drop: dict[str, list[str]]) -> list[dict]:
    return [{"name": s.name, "meta": s.meta, "drop": drop.get(s.name, [])} for s in sel_shards]


def _valid_scores(fs, rules: RowRules, item: dict) -> np.ndarray:
    r = shard_rows(fs, item["meta"], rules, item["drop"])
    return r.scores[r.valid]


def _stats_pass(fs, rules: RowRules, items: list[dict]) -> tuple[dict[str, ShardCounts], int, float, float]:
    def per_item(item: dict):
        r = shard_rows(fs, item["meta"], rules, item["drop"])
        v = r.scores[r.valid]
        c = ShardCounts(
            item["name"],
            len(r.valid),
            int(r.duplicate.sum()),
            int(r.missing_score.sum()),
            not_downloaded=int(r.not_downloaded.sum()),
            outside_subset=int(r.outside.sum()),
            not_downloaded_by=r.reasons,
        )
        return (
            {item["name"]: c},
            len(v),
            (float(v.min()) if len(v) else math.inf),
            (float(v.max()) if len(v) else -math.inf),
        )

    def combine(a, b):
        return {**a[0], **b[0]}, a[1] + b[1], min(a[2], b[2]), max(a[3], b[3])

    return scan_reduce(items, per_item, combine)


def _threshold(fs, rules: RowRules, items: list[dict], n: int, lo: float, hi: float, top_fraction: float) -> float:
    def histogram(edges: np.ndarray, closed: bool):
        return scan_reduce(items, lambda it: bin_stats(_valid_scores(fs, rules, it), edges, closed), merge_stats)

    def collect(a: float, b: float) -> np.ndarray:
        def per_item(it):
            v = _valid_scores(fs, rules, it)
            return v[(v >= a) & (v <= b)]

        return scan_reduce(items, per_item, lambda x, y: np.concatenate([x, y]))

    return quantile_linear(n, 1.0 - top_fraction, lo, hi, histogram, collect)


def _kept_pass(fs, rules: RowRules, items: list[dict], threshold: float) -> dict[str, int]:
    def per_item(item: dict):
        return {item["name"]: int((_valid_scores(fs, rules, item) >= threshold).sum())}

    return scan_reduce(items, per_item, lambda a, b: {**a, **b})


def find_duplicates(fs, shards: list[formats.PoolShard]) -> dict[str, list[str]]:
    """{shard: keys to drop}: for each uid seen more than once, all rows but the smallest (shard, key)."""
    from ray.data.expressions import col

    from pipelines.data.raytools import items_dataset

    def rows(batch):
        import json

        tables = []
        for spec in batch["spec"]:
            item = json.loads(spec)
            t = formats.read_metadata(fs, item["meta"], ["uid", "key"], optional=("status",))
            if "status" in t.column_names:  # img2dataset rows never downloaded are not samples
                t = t.filter(pc.equal(t["status"], STATUS_OK)).select(["uid", "key"])
            tables.append(t.append_column("shard", pa.array([item["name"]] * t.num_rows, pa.string())))
        return pa.concat_tables(tables)

    meta = items_dataset([{"name": s.name, "meta": s.meta} for s in shards]).map_batches(
        rows, batch_size=None, batch_format="numpy", num_cpus=SCAN_CPUS
    )
    import ray

    parts = max(1, min(len(shards), 2 * int(ray.cluster_resources().get("CPU", 1)), 256))
    dup_uids = [
        r["uid"] for r in meta.groupby("uid", num_partitions=parts).count().filter(expr=col("count()") > 1).iter_rows()
    ]
    if not dup_uids:
        return {}
    dups = meta.filter(expr=col("uid").is_in(dup_uids)).take_all()
    best: dict[str, tuple[str, str]] = {}
    for r in dups:
        cand = (r["shard"], r["key"])
        best[r["uid"]] = min(best.get(r["uid"], cand), cand)
    drop: dict[str, list[str]] = {}
    for r in dups:
        if (r["shard"], r["key"]) != best[r["uid"]]:
            drop.setdefault(r["shard"], []).append(r["key"])
    return drop


def _no_rows(cfg: DataConfig, counts: dict[str, ShardCounts]) -> str:
    c = {k: sum(getattr(x, k) for x in counts.values()) for k in ("rows", "not_downloaded", "outside_subset")}
    why = f"{c['rows']} rows: {c['not_downloaded']} not downloaded, {c['outside_subset']} outside the subset"
    if cfg.pool.rule != "subset":
        return f"pool {cfg.pool.uri}: no row has a valid {cfg.pool.score_column!r} score ({why})"
    return f"pool {cfg.pool.uri}: no row is in the subset {cfg.pool.subset} ({why})"


def select_pool(cfg: DataConfig, shards: list[formats.PoolShard] | None = None) -> Selection:
    """Run the selection passes for `cfg.pool` (Ray must be running); `shards` = an existing listing."""
    fs, root = storage.filesystem(cfg.pool.uri, cfg.s3)
    shards = shards if shards is not None else formats.list_pool_shards(fs, root)
    rules = RowRules.of(cfg)
    drop = find_duplicates(fs, shards) if cfg.pool.dedup else {}
    items = _items(shards, drop)
    counts, n_valid, lo, hi = _stats_pass(fs, rules, items)
    if n_valid == 0:
        from pipelines.data.errors import DataError

        raise DataError(_no_rows(cfg, counts))
    rule, frac = cfg.pool.rule, None
    if rule == "threshold":
        threshold = float(cfg.pool.threshold)
    elif rule == "subset":
        threshold = -math.inf
    else:
        frac = cfg.pool.top_fraction
        threshold = _threshold(fs, rules, items, n_valid, lo, hi, frac)
    for name, kept in _kept_pass(fs, rules, items, threshold).items():
        counts[name].kept = kept
    return Selection(cfg.pool.score_column, rule, threshold, frac, shards, counts, drop, rules, cfg.pool.subset)
