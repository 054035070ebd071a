"""Read tasks: one pool shard's kept images plus its slice of the curated stream, already mixed.

Runs inside Ray Data map tasks (`pipeline.py`). Output rows: `image` (encoded bytes), `is_pool`,
`shard` ("pool:NAME" / "curated:FILE", for error reports), `slot` (epoch * 2**40 + position in the
epoch's mixed sequence) and `aug_seed` (the sample's augmentation seed). A spec with `after` >= 0 yields
only the rows with a larger slot (a resumed stream): the skipped ones are read but never decoded.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from pipelines.data import formats
from pipelines.data.decode import decode_batch
from pipelines.data.errors import DataError
from pipelines.data.mix import CuratedStream, SlotPattern, aug_seeds, row_order
from pipelines.data.plan import CuratedSource
from pipelines.data.quality import Quality, report_bad
from pipelines.data.raytools import tune_ray_data
from pipelines.data.rows import RowRules
from pipelines.data.select import shard_scores
from pipelines.storage import StorageError

__all__ = ["ReadContext", "mixed_datasource", "SLOTS_PER_EPOCH"]

SLOTS_PER_EPOCH = 2**40

# Every process that unpickles a dataset built on these read tasks imports this module, including the
# split coordinator that runs a Ray Train dataset's execution: that is how it gets the setting too.
tune_ray_data()


@dataclass
class ReadContext:
    pool_fs: pafs.FileSystem
    rules: RowRules  # which metadata rows are candidates (status, subset, score source)
    threshold: float
    curated: CuratedSource
    seed: int
    pool_probability: float
    window: int
    chunk: int
    tracker: Quality
    decode: dict | None = None  # decode_batch kwargs when decoding inside the read task ("fused")


def _pool_images(spec: dict, ctx: ReadContext) -> list[bytes | None]:
    name = spec["shard"]
    try:
        table, _, valid = shard_scores(ctx.pool_fs, spec["meta"], ctx.rules, spec["drop"])
        scores = table["score"].to_numpy(zero_copy_only=False)
        keep = valid & (np.nan_to_num(scores, nan=-np.inf) >= ctx.threshold)
        keys = np.asarray(table["key"].to_pylist(), dtype=object)[keep]
        if len(keys) != spec["n_pool"]:
            raise DataError(
                f"pool shard {name!r}: {len(keys)} rows pass the selection, the plan expected "
                f"{spec['n_pool']} (did the shard change since selection?)"
            )
        keys = keys[row_order(len(keys), ctx.seed, spec["epoch"], name)]
        wanted, found = set(keys), {}
        for key, files in formats.iter_wds(ctx.pool_fs, spec["tar"], exts=set(formats.IMAGE_EXTS)):
            base = key.rsplit("/", 1)[-1]
            if base in wanted:
                found[base] = next((files[e] for e in formats.IMAGE_EXTS if e in files), None)
    except StorageError as e:
        raise DataError(f"pool shard {name!r}: {e}") from None
    return [found.get(k) for k in keys]


def _curated_images(spec: dict, ctx: ReadContext) -> tuple[list[bytes | None], list[str]]:
    cur = ctx.curated
    stream = CuratedStream(cur.chunk_rows, ctx.seed, spec["epoch"])
    images, names, cache = [], [], {}
    for _, chunk, rows in stream.locate(spec["cur_start"], spec["cur_stop"]):
        if chunk not in cache:
            f, c = cur.chunks[chunk]
            cache[chunk] = formats.read_curated_chunk(
                cur.fs, cur.files[f], c, cur.cfg.image_column, cur.cfg.label_column, cur.cfg.split
            )[0]
        images += [cache[chunk][r] for r in rows]
        names += [f"curated:{cur.file_name(chunk)}"] * len(rows)
    return images, names


def _mixed(spec: dict, ctx: ReadContext) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(images, is_pool, shard names, slots) for the task's slots, before dropping missing images."""
    start, stop = spec["slot_start"], spec["slot_stop"]
    is_pool = SlotPattern(ctx.pool_probability, ctx.seed, spec["epoch"], ctx.window).mask(start, stop)
    pool = _pool_images(spec, ctx) if spec["n_pool"] else []
    cur, cur_names = _curated_images(spec, ctx)
    if is_pool.sum() != len(pool) or (~is_pool).sum() != len(cur):
        raise DataError(
            f"pool shard {spec['shard']!r}: read plan mismatch ({len(pool)} pool / {len(cur)} "
            f"curated rows for {is_pool.sum()} / {(~is_pool).sum()} slots)"
        )
    images = np.empty(stop - start, dtype=object)
    names = np.empty(stop - start, dtype=object)
    images[is_pool], images[~is_pool] = pool, cur
    names[is_pool], names[~is_pool] = f"pool:{spec['shard']}", cur_names
    return images, is_pool, names, np.arange(start, stop, dtype=np.int64)


def _read_one(spec: dict, ctx: ReadContext) -> Iterator[pa.Table]:
    images, is_pool, names, slots = _mixed(spec, ctx)
    seeds = aug_seeds(ctx.seed, spec["epoch"], slots)
    slots = slots + spec["epoch"] * SLOTS_PER_EPOCH  # sample ids, unique across the epochs of a dataset
    if spec.get("after", -1) >= 0:  # a resumed stream: rows up to `after` were consumed; never decoded
        later = slots > spec["after"]
        images, is_pool, names, slots, seeds = (a[later] for a in (images, is_pool, names, slots, seeds))
    present = np.array([img is not None for img in images], dtype=bool)
    if not present.all():
        bad: dict[str, list[int]] = {}
        for name, slot in zip(names[~present], slots[~present]):
            bad.setdefault(name, []).append(int(slot))
        report_bad(ctx.tracker, bad, "missing_image")
    images, is_pool, names, slots, seeds = (a[present] for a in (images, is_pool, names, slots, seeds))
    for i in range(0, len(slots), ctx.chunk):
        s = slice(i, i + ctx.chunk)
        table = pa.table(
            {
                "image": pa.array(list(images[s]), pa.binary()),
                "is_pool": pa.array(is_pool[s]),
                "shard": pa.array(list(names[s]), pa.string()),
                "slot": pa.array(slots[s]),
                "aug_seed": pa.array(seeds[s]),
            }
        )
        yield table if ctx.decode is None else _decoded(table, ctx)


def _decoded(table: pa.Table, ctx: ReadContext):
    """The fused path: decode + augment inside the read task, returned as a block."""
    from ray.data.block import BlockAccessor

    batch = {name: table[name].to_numpy(zero_copy_only=False) for name in table.column_names}
    return BlockAccessor.batch_to_block(decode_batch(batch, tracker=ctx.tracker, **ctx.decode))


_CONTEXTS: dict[str, ReadContext] = {}


def _read_task(spec: dict, token: str, ctx_ref) -> Iterator[pa.Table]:
    """Body of one Ray Data read task; the shared context is fetched once per worker process and dataset
    (`token`: unique per dataset, unlike an object id, which a later Ray session in this process may repeat)."""
    import ray

    if token not in _CONTEXTS:
        _CONTEXTS.clear()
        _CONTEXTS[token] = ray.get(ctx_ref)
    yield from _read_one(spec, _CONTEXTS[token])


def mixed_datasource(specs: list[dict], ctx: ReadContext):
    """A Ray Data `Datasource` with one read task per plan task (pool shard + its curated slice), in plan
    order. The context (filesystems, curated chunk table) goes to the object store once."""
    import ray
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    ctx_ref, token = ray.put(ctx), uuid.uuid4().hex

    class MixedShards(Datasource):
        def estimate_inmemory_data_size(self) -> int | None:
            return None

        def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None) -> list[ReadTask]:
            return [
                ReadTask(
                    functools.partial(_read_task, spec, token, ctx_ref),
                    BlockMetadata(
                        num_rows=spec["slot_stop"] - spec["slot_start"],
                        size_bytes=None,
                        exec_stats=None,
                        input_files=(spec["tar"],),
                    ),
                    per_task_row_limit=per_task_row_limit,
                )
                for spec in specs
            ]

    return MixedShards()
