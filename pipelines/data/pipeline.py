"""The training data pipeline on Ray Data: select -> plan -> read+mix -> decode+augment.

    ds = build_train_dataset(cfg.data, img_size=224, seed=0, epoch=0)   # column "image": (3, S, S) float32
    for images in iter_torch_batches(ray.train.get_dataset_shard("train"), batch_size=64):
        ...                                                               # (B, 3, S, S) float32

Corrupt or missing images are skipped and counted per shard by a small actor (`QualityTracker`);
a shard past `cfg.max_bad_fraction` of its samples stops the run with an error naming it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from pipelines.data.config import DataConfig
from pipelines.data.decode import DecodeActor, QualityTracker, decode_batch
from pipelines.data.formats import PoolShard, list_pool_shards
from pipelines.data.plan import CuratedSource, EpochPlan, curated_source, plan_epoch
from pipelines.data.raytools import ensure_ray
from pipelines.data.reader import ReadContext, mixed_datasource
from pipelines.data.select import Selection, select_pool
from pipelines.data.storage import filesystem

__all__ = ["build_train_dataset", "iter_torch_batches", "build_epoch", "BuiltEpoch"]

_SELECTIONS: dict[str, Selection] = {}


@dataclass
class BuiltEpoch:
    ds: object  # ray.data.Dataset
    selection: Selection
    curated: CuratedSource
    plan: EpochPlan
    tracker: object  # actor handle


def _selection(cfg: DataConfig, shards: list[PoolShard], fresh: bool) -> Selection:
    """The pool selection, computed once per (pool settings, shard listing) in this process."""
    key = cfg.model_dump_json(include={"pool", "s3"}) + repr([(s.name, s.size) for s in shards])
    if fresh or key not in _SELECTIONS:
        _SELECTIONS[key] = select_pool(cfg, shards)
    return _SELECTIONS[key]


def build_epoch(cfg: DataConfig, img_size: int, seed: int, epoch: int = 0, keep_source: bool = False,
                fresh_selection: bool = False) -> BuiltEpoch:
    """Everything `build_train_dataset` builds, plus the plan and tracker (for manifests and tests)."""
    import ray
    from ray.data import ActorPoolStrategy, TaskPoolStrategy

    fs, root = filesystem(cfg.pool.uri, cfg.s3)
    shards = list_pool_shards(fs, root)  # listing first: a missing shard or bad credentials fail fast
    cur = curated_source(cfg.curated, cfg.s3)
    ensure_ray()
    sel = _selection(cfg, shards, fresh_selection)
    plan = plan_epoch(cfg, sel, cur, seed, epoch)
    tracker = ray.remote(num_cpus=0)(QualityTracker).remote(plan.expected, cfg.max_bad_fraction)
    d = cfg.decode
    kwargs = {"img_size": img_size, "aug": cfg.augment, "keep_source": keep_source}
    fused = d.compute == "fused"
    ctx = ReadContext(fs, sel.score_column, sel.threshold, cur, seed, epoch, cfg.mix.pool_probability,
                      cfg.mix.window, d.batch_size if fused else d.read_chunk, tracker, kwargs if fused else None)
    ds = ray.data.read_datasource(
        mixed_datasource(plan.tasks, ctx), override_num_blocks=len(plan.tasks),
        num_cpus=d.num_cpus if fused else d.read_num_cpus,
        compute=TaskPoolStrategy(size=d.concurrency if fused else d.read_concurrency))
    if d.compute == "actors":
        ds = ds.map_batches(DecodeActor, batch_size=d.batch_size, batch_format="numpy",
                            fn_constructor_kwargs={**kwargs, "tracker": tracker},
                            compute=ActorPoolStrategy(size=d.concurrency), num_cpus=d.num_cpus)
    elif d.compute == "tasks":
        ds = ds.map_batches(decode_batch, batch_size=d.batch_size, batch_format="numpy",
                            fn_kwargs={**kwargs, "tracker": tracker},
                            compute=TaskPoolStrategy(size=d.concurrency), num_cpus=d.num_cpus)
    # Ray Data cuts output blocks by bytes: aim for ~block_rows decoded images (this dataset's context only)
    ds.context.target_max_block_size = d.block_rows * 3 * img_size * img_size * 4 + 2**16
    return BuiltEpoch(ds, sel, cur, plan, tracker)


def build_train_dataset(cfg: DataConfig, img_size: int, seed: int, epoch: int = 0):
    """The mixed, decoded, augmented training stream for one epoch: a `ray.data.Dataset` with one column,
    `image`, float32 (3, img_size, img_size), mean/std normalised. Same (seed, epoch) -> same samples,
    order (with preserve_order) and crops; another epoch -> another order and crops."""
    return build_epoch(cfg, img_size, seed, epoch).ds


def iter_torch_batches(ds_or_shard, batch_size: int, drop_last: bool = True, **kwargs) -> Iterator:
    """(B, 3, S, S) float32 torch tensors from a Dataset or a Ray Train shard (`get_dataset_shard`).
    Extra keyword arguments go to Ray's `iter_torch_batches` (e.g. local_shuffle_buffer_size)."""
    import torch

    for batch in ds_or_shard.iter_torch_batches(batch_size=batch_size, drop_last=drop_last,
                                                dtypes={"image": torch.float32}, **kwargs):
        yield batch["image"]
