"""The epoch plan (driver side, O(#shards + #curated chunks)): which read task produces which slots.

One read task per pool shard with kept rows, in a seeded per-epoch shard order. Task t fills slots
[slot_start, slot_stop) of the epoch's mixed sequence: its shard's kept rows (seeded order) in the pool
slots and curated stream positions [cur_start, cur_stop) in the others (see `mix.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow.fs as pafs

from pipelines import storage
from pipelines.data import formats
from pipelines.data.config import CuratedConfig, DataConfig, S3Config
from pipelines.data.mix import CuratedStream, SlotPattern, plan_ranges, shard_order
from pipelines.data.select import Selection

__all__ = ["CuratedSource", "EpochPlan", "curated_source", "plan_epoch"]


@dataclass
class CuratedSource:
    """The curated files and their chunks (Parquet row groups / whole tars), in listing order."""

    fs: pafs.FileSystem
    root: str
    cfg: CuratedConfig
    files: list[formats.CuratedFile]
    chunks: list[tuple[int, int]]  # (file index, chunk index within the file)
    chunk_rows: tuple[int, ...]

    def file_name(self, chunk: int) -> str:
        return self.files[self.chunks[chunk][0]].path.rsplit("/", 1)[-1]

    @property
    def rows(self) -> int:
        return int(sum(self.chunk_rows))


def curated_source(cfg: CuratedConfig, s3: S3Config | None) -> CuratedSource:
    fs, root = storage.filesystem(cfg.uri, s3)
    files = formats.list_curated(fs, root, cfg.format, cfg.split, cfg.label_column)
    chunks = [(f, c) for f, file in enumerate(files) for c in range(len(file.chunk_rows))]
    rows = tuple(files[f].chunk_rows[c] for f, c in chunks)
    return CuratedSource(fs, root, cfg, files, chunks, rows)


@dataclass
class EpochPlan:
    seed: int
    epoch: int
    tasks: list[dict]  # JSON-able read task specs
    n_pool: int
    n_curated: int
    expected: dict[str, int]  # samples drawn this epoch per "pool:SHARD" / "curated:FILE"

    @property
    def n_slots(self) -> int:
        return self.n_pool + self.n_curated


def plan_epoch(cfg: DataConfig, sel: Selection, cur: CuratedSource, seed: int, epoch: int) -> EpochPlan:
    pattern = SlotPattern(cfg.mix.pool_probability, seed, epoch, cfg.mix.window)
    order = [sel.shards[i] for i in shard_order(len(sel.shards), seed, epoch)]
    ranges = plan_ranges([sel.counts[s.name].kept for s in order], pattern)
    if not ranges:
        from pipelines.data.errors import DataError

        raise DataError(f"pool {cfg.pool.uri}: the selection kept no rows (threshold {sel.threshold:.6g})")
    tasks = []
    for shard, r in zip(order, ranges):
        if r.slot_stop == r.slot_start:
            continue
        tasks.append(
            {
                "shard": shard.name,
                "tar": shard.tar,
                "meta": shard.meta,
                "drop": sel.drop_keys.get(shard.name, []),
                "n_pool": r.n_pool,
                "slot_start": r.slot_start,
                "slot_stop": r.slot_stop,
                "cur_start": r.cur_start,
                "cur_stop": r.cur_stop,
            }
        )
    n_pool = sum(r.n_pool for r in ranges)
    n_cur = ranges[-1].cur_stop
    if n_cur and cur.rows == 0:
        from pipelines.data.errors import DataError

        raise DataError(f"curated set {cfg.curated.uri} is empty but the mix needs {n_cur} samples")
    expected = {f"pool:{s.name}": sel.counts[s.name].kept for s in sel.shards}
    draws = CuratedStream(cur.chunk_rows, seed, epoch).draws_per_chunk(n_cur)
    for chunk in np.flatnonzero(draws):
        name = f"curated:{cur.file_name(int(chunk))}"
        expected[name] = expected.get(name, 0) + int(draws[chunk])
    return EpochPlan(seed, epoch, tasks, n_pool, n_cur, expected)
