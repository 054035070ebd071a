"""The training data pipeline on Ray Data: select -> plan -> read+mix -> decode+augment.

    ds = build_train_dataset(cfg.data, img_size=224, seed=0, epoch=0)   # column "image": (3, S, S) float32
    for images in iter_torch_batches(ds, batch_size=64):
        ...                                                               # (B, 3, S, S) float32

Training does not split one dataset between workers: `plan_stream` plans the read tasks of the whole run
once, and each worker reads its own share from its checkpointed position (`StreamPlan.dataset(items)`,
see `stream.py` and `pipelines/train/feed.py`).

Corrupt or missing images are skipped and counted per shard by a small actor (`quality.QualityTracker`,
one per process, a ledger per build); a shard past `cfg.max_bad_fraction` of its samples stops the run
with an error naming it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from pipelines.data.config import DataConfig, DecodeConfig
from pipelines.data.decode import DecodeActor, decode_batch
from pipelines.data.formats import PoolShard, list_pool_shards
from pipelines.data.plan import CuratedSource, EpochPlan, curated_source, plan_epoch
from pipelines.data.quality import Quality, new_quality
from pipelines.data.raytools import ensure_ray
from pipelines.data.reader import SLOTS_PER_EPOCH, ReadContext, mixed_datasource
from pipelines.data.rows import RowRules
from pipelines.data.select import Selection, select_pool
from pipelines.storage import filesystem

__all__ = [
    "build_train_dataset",
    "iter_torch_batches",
    "build_epoch",
    "BuiltEpoch",
    "compute_selections",
    "use_selections",
    "plan_stream",
    "StreamPlan",
]

_SELECTIONS: dict[str, Selection] = {}


@dataclass
class BuiltEpoch:
    ds: object  # ray.data.Dataset
    selection: Selection
    curated: CuratedSource
    plans: list[EpochPlan]  # one per epoch, in stream order
    tracker: Quality  # this build's ledger of skipped samples (`tracker.summary()`)

    @property
    def plan(self) -> EpochPlan:
        return self.plans[0]

    @property
    def n_slots(self) -> int:
        return sum(p.n_slots for p in self.plans)


def _selection_key(cfg: DataConfig, shards: list[PoolShard]) -> str:
    return cfg.model_dump_json(include={"pool", "s3"}) + repr([(s.name, s.size) for s in shards])


def _selection(cfg: DataConfig, shards: list[PoolShard], fresh: bool) -> Selection:
    """The pool selection, computed once per (pool settings, shard listing) in this process."""
    key = _selection_key(cfg, shards)
    if fresh or key not in _SELECTIONS:
        _SELECTIONS[key] = select_pool(cfg, shards)
    return _SELECTIONS[key]


def compute_selections(configs: list[DataConfig]) -> dict[str, Selection]:
    """The selection of every distinct pool among `configs`, keyed like this process's cache: a sweep
    computes them once in its driver and hands them to every trial (`use_selections`), instead of each
    trial's fresh process scanning the pool's metadata again."""
    out, seen = {}, set()
    for cfg in configs:
        pool = cfg.model_dump_json(include={"pool", "s3"})
        if pool in seen:
            continue
        seen.add(pool)
        fs, root = filesystem(cfg.pool.uri, cfg.s3)
        shards = list_pool_shards(fs, root)
        ensure_ray()
        out[_selection_key(cfg, shards)] = _selection(cfg, shards, False)
    return out


def use_selections(selections: dict[str, Selection]) -> None:
    """Seed this process's cache; a key whose shard listing has changed since simply never matches."""
    _SELECTIONS.update(selections)


def _tasks(plans: list[EpochPlan]) -> tuple[list[dict], dict[str, int]]:
    """Read tasks of every epoch, in order, and the samples each shard/file feeds over all of them."""
    tasks, expected = [], {}
    for p in plans:
        tasks += [{**t, "epoch": p.epoch} for t in p.tasks]
        for name, n in p.expected.items():
            expected[name] = expected.get(name, 0) + n
    return tasks, expected


@dataclass
class StreamPlan:
    """The read tasks of every epoch a run streams, in one global order, and what reading them needs.

    Picklable (no Ray objects but the tracker's handle): the driver plans once, each training worker builds
    its own dataset from its share (`dataset(items)`, see `stream.py`)."""

    tasks: list[dict]
    ctx: ReadContext
    decode: DecodeConfig
    decode_kwargs: dict
    img_size: int

    @property
    def task_stops(self) -> list[int]:
        """One past each task's last sample id (slot), in task order."""
        return [t["epoch"] * SLOTS_PER_EPOCH + t["slot_stop"] for t in self.tasks]

    def dataset(self, items: list[tuple[int, int]] | None = None, share: int = 1):
        """A `ray.data.Dataset` (columns `image`, `slot`) over `items` in order (default: every task),
        with 1/`share` of the configured read/decode concurrency (`share` workers read at once)."""
        import ray
        from ray.data import ActorPoolStrategy, TaskPoolStrategy

        items = [(t, -1) for t in range(len(self.tasks))] if items is None else items
        specs = [{**self.tasks[t], "after": a} for t, a in items]
        d, fused, kwargs = self.decode, self.decode.compute == "fused", self.decode_kwargs
        conc = max(1, -(-d.concurrency // share))
        ds = ray.data.read_datasource(
            mixed_datasource(specs, self.ctx),
            override_num_blocks=max(len(specs), 1),
            num_cpus=d.num_cpus if fused else d.read_num_cpus,
            compute=TaskPoolStrategy(size=conc if fused else max(1, -(-d.read_concurrency // share))),
        )
        tracker = self.ctx.tracker
        if d.compute == "actors":
            ds = ds.map_batches(
                DecodeActor,
                batch_size=d.batch_size,
                batch_format="numpy",
                fn_constructor_kwargs={**kwargs, "tracker": tracker},
                compute=ActorPoolStrategy(size=conc),
                num_cpus=d.num_cpus,
            )
        elif d.compute == "tasks":
            ds = ds.map_batches(
                decode_batch,
                batch_size=d.batch_size,
                batch_format="numpy",
                fn_kwargs={**kwargs, "tracker": tracker},
                compute=TaskPoolStrategy(size=conc),
                num_cpus=d.num_cpus,
            )
        # Ray Data cuts output blocks by bytes (this dataset's context only). When one decode call returns
        # at least 3/4 of block_rows images (fused: block_rows per call; tasks/actors: batch_size), a target
        # at 3/4 of block_rows passes each output straight through as one contiguous block. Smaller outputs
        # are merged up to ~block_rows into a chunked array, which Ray's batcher copies whole the first time
        # a batch takes part of it: ~40% of the driver's CPU in a 224 px pass (docs/results/data_ingest.md,
        # session 6); one block per 64-image call was slower still in actors mode (same doc).
        block_bytes = d.block_rows * 3 * self.img_size * self.img_size * 4
        whole = 4 * (d.block_rows if fused else d.batch_size) >= 3 * d.block_rows
        ds.context.target_max_block_size = 3 * block_bytes // 4 if whole else block_bytes + 2**16
        ds.context.execution_options.preserve_order = True  # the stream order is the position (stream.py)
        return ds


def _chain_until(plans: list[EpochPlan], more, min_samples: int, world: int) -> None:
    """Append epochs (`more(epoch)`) until every rank's round-robin share of the tasks (task i to rank
    i % world) plans >= 1.05 x its part of `min_samples`. Linear in the tasks planned."""
    share, n = [0] * world, 0
    need = 1.05 * min_samples / world
    while True:
        for t in plans[-1].tasks:
            share[n % world] += t["slot_stop"] - t["slot_start"]
            n += 1
        if min(share) >= need:
            return
        plans.append(more(plans[-1].epoch + 1))


def plan_stream(
    cfg: DataConfig,
    img_size: int,
    seed: int,
    epoch: int = 0,
    keep_source: bool = False,
    fresh_selection: bool = False,
    num_epochs: int = 1,
    min_samples: int = 0,
    world: int = 1,
) -> tuple[StreamPlan, Selection, CuratedSource, list[EpochPlan], Quality]:
    """Select, plan `num_epochs` epochs from `epoch` (or, with `min_samples` > 0, as many as it takes for
    each of `world` round-robin ranks to stream 1.05 x its share of that many samples), and the tracker."""
    fs, root = filesystem(cfg.pool.uri, cfg.s3)
    shards = list_pool_shards(fs, root)  # listing first: a missing shard or bad credentials fail fast
    cur = curated_source(cfg.curated, cfg.s3)
    ensure_ray()
    sel = _selection(cfg, shards, fresh_selection)
    plans = [plan_epoch(cfg, sel, cur, seed, epoch)]
    if min_samples > 0:
        _chain_until(plans, lambda e: plan_epoch(cfg, sel, cur, seed, e), min_samples, max(world, 1))
    else:
        plans += [plan_epoch(cfg, sel, cur, seed, e) for e in range(epoch + 1, epoch + num_epochs)]
    tasks, expected = _tasks(plans)
    tracker = new_quality(expected, cfg.max_bad_fraction)
    d = cfg.decode
    kwargs = {"img_size": img_size, "aug": cfg.augment, "keep_source": keep_source}
    fused = d.compute == "fused"
    # fused: a read task decodes and yields whole blocks of block_rows images (see StreamPlan.dataset)
    ctx = ReadContext(
        fs,
        sel.rules or RowRules.of(cfg),
        sel.threshold,
        cur,
        seed,
        cfg.mix.pool_probability,
        cfg.mix.window,
        d.block_rows if fused else d.read_chunk,
        tracker,
        kwargs if fused else None,
    )
    return StreamPlan(tasks, ctx, d, kwargs, img_size), sel, cur, plans, tracker


def build_epoch(
    cfg: DataConfig,
    img_size: int,
    seed: int,
    epoch: int = 0,
    keep_source: bool = False,
    fresh_selection: bool = False,
    num_epochs: int = 1,
    min_samples: int = 0,
) -> BuiltEpoch:
    """Everything `build_train_dataset` builds, plus the plans and tracker (for manifests and tests).

    `min_samples` > 0 chains as many epochs as it takes to stream at least that many samples (5% spare
    for skipped images and per-worker remainders), overriding `num_epochs`."""
    plan, sel, cur, plans, tracker = plan_stream(
        cfg, img_size, seed, epoch, keep_source, fresh_selection, num_epochs, min_samples
    )
    return BuiltEpoch(plan.dataset(), sel, cur, plans, tracker)


def build_train_dataset(
    cfg: DataConfig, img_size: int, seed: int, epoch: int = 0, num_epochs: int = 1, min_samples: int = 0
):
    """The mixed, decoded, augmented training stream: a `ray.data.Dataset` with one column, `image`,
    float32 (3, img_size, img_size), mean/std normalised. Same (seed, epoch) -> same samples, order (with
    preserve_order) and crops; another epoch -> another order and crops.

    `num_epochs` > 1 chains epochs epoch, epoch+1, ... into one dataset (each with its own order and
    crops): iterating one dataset again repeats the same crops, so a multi-epoch run that builds its
    dataset once should ask for all its epochs here (or for `min_samples`, the samples it will consume)."""
    if num_epochs < 1:
        raise ValueError(f"num_epochs must be >= 1, got {num_epochs}")
    return build_epoch(cfg, img_size, seed, epoch, num_epochs=num_epochs, min_samples=min_samples).ds


def iter_torch_batches(ds_or_shard, batch_size: int, drop_last: bool = True, **kwargs) -> Iterator:
    """(B, 3, S, S) float32 torch tensors from a Dataset or a Ray Train shard (`get_dataset_shard`).
    Extra keyword arguments go to Ray's `iter_torch_batches` (e.g. local_shuffle_buffer_size)."""
    import torch

    for batch in ds_or_shard.iter_torch_batches(
        batch_size=batch_size, drop_last=drop_last, dtypes={"image": torch.float32, "slot": torch.int64}, **kwargs
    ):
        yield batch["image"]
