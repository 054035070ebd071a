"""Which rows of one pool shard's metadata are candidates for selection, and why the others are not.

Runs in Ray tasks (selection scans, read tasks). Each row falls in exactly one class, in this order:
- not downloaded: img2dataset's `status` column says anything but `success` (`failed_to_download`,
  `failed_to_resize`, ...): the row was never a sample (no image in the tar); counted by reason, never
  against `max_bad_fraction`. A metadata file without a `status` column has every row downloaded.
- duplicate: a re-posted uid (`pool.dedup`), not the copy that is kept;
- outside the subset (`pool.subset`);
- missing score: no finite score (only when a score rule applies);
- valid: a candidate for the threshold / top fraction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines import storage
from pipelines.data import formats, uids
from pipelines.data.config import DataConfig

__all__ = ["RowRules", "ShardRows", "shard_rows", "STATUS_OK"]

STATUS_OK = "success"


@dataclass(frozen=True)
class RowRules:
    """What decides a row's class (picklable; the uid files are loaded once per worker process)."""

    score: str
    use_score: bool  # False: the subset alone selects (no score needed)
    subset: tuple | None = None  # (filesystem, path) of the uid list, resolved on the driver
    scores: tuple | None = None  # (filesystem, path) of a separate uid -> score Parquet

    @classmethod
    def of(cls, cfg: DataConfig) -> RowRules:
        p = cfg.pool
        subset = storage.filesystem(p.subset, cfg.s3) if p.subset else None
        scores = storage.filesystem(p.scores, cfg.s3) if p.scores and p.rule != "subset" else None
        return cls(p.score_column, p.rule != "subset", subset, scores)


@dataclass
class ShardRows:
    keys: pa.ChunkedArray
    scores: np.ndarray  # float64; NaN = missing; zeros when no score rule applies
    not_downloaded: np.ndarray
    duplicate: np.ndarray
    outside: np.ndarray
    valid: np.ndarray
    reasons: dict[str, int]  # not-downloaded rows by status

    @property
    def missing_score(self) -> np.ndarray:
        return ~(self.not_downloaded | self.duplicate | self.outside | self.valid)


def _not_downloaded(table: pa.Table) -> tuple[np.ndarray, dict[str, int]]:
    if "status" not in table.column_names:
        return np.zeros(table.num_rows, dtype=bool), {}
    status = pc.fill_null(table["status"].cast(pa.string()), "unknown")
    bad = pc.not_equal(status, STATUS_OK).to_numpy(zero_copy_only=False)
    reasons: dict[str, int] = {}
    for s in status.filter(pc.not_equal(status, STATUS_OK)).to_pylist():
        reasons[s] = reasons.get(s, 0) + 1
    return bad, reasons


def _scores(table: pa.Table, rules: RowRules, keys: np.ndarray | None) -> np.ndarray:
    if not rules.use_score:
        return np.zeros(table.num_rows)
    if rules.scores:
        return uids.lookup_scores(keys, uids.load_scores(rules.scores, rules.score))
    return table[rules.score].cast(pa.float64()).to_numpy(zero_copy_only=False)  # nulls arrive as NaN


def shard_rows(fs, meta_path: str, rules: RowRules, drop: list[str]) -> ShardRows:
    """Every row's class for one shard's metadata; `drop` = keys of duplicates to drop."""
    need_uid = bool(rules.subset or (rules.use_score and rules.scores))
    cols = ["key"] + (["uid"] if need_uid else []) + ([rules.score] if rules.use_score and not rules.scores else [])
    table = formats.read_metadata(fs, meta_path, cols, optional=("status",))
    nd, reasons = _not_downloaded(table)
    dup = ~nd & (
        pc.is_in(table["key"], value_set=pa.array(drop, pa.string())).to_numpy(zero_copy_only=False)
        if drop
        else np.zeros(table.num_rows, dtype=bool)
    )
    keys = uids.hex_to_key(table["uid"]) if need_uid else None
    outside = np.zeros(table.num_rows, dtype=bool)
    if rules.subset:
        outside = ~nd & ~dup & ~uids.in_subset(keys, uids.load_subset(rules.subset))
    scores = _scores(table, rules, keys)
    valid = ~nd & ~dup & ~outside & np.isfinite(scores)
    return ShardRows(table["key"], scores, nd, dup, outside, valid, reasons)
