"""A training worker's data: its stream read from the checkpoint's position, and that position saved back.

The driver plans the run's read tasks once (`pipelines.data.pipeline.plan_stream`) and hands the plan to
every worker; each worker builds its own Ray Data read of its share from where the checkpoint says it
stopped (`pipelines.data.stream`), so a resume at step 400k reads nothing before it.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from pipelines.config import ExperimentConfig
from pipelines.data.stream import (
    Deal,
    Position,
    WorkerStream,
    data_fingerprint,
    prefix_lengths,
    remaining,
    worker_items,
)

__all__ = ["Feed", "open_feed", "resume_guard", "check_resumable"]

GUARDED = ("optim.batch_size", "seed", "data", "scaling.shuffle_buffer", "model.img_size")


def resume_guard(cfg: ExperimentConfig) -> dict:
    """The settings a resume must not change (they decide which samples come next, and how)."""
    return {
        "optim.batch_size": cfg.optim.batch_size,
        "seed": cfg.seed,
        "data": data_fingerprint(cfg.data.model_dump(mode="json")),
        "scaling.shuffle_buffer": cfg.scaling.shuffle_buffer,
        "model.img_size": cfg.aim_config().img_size,
    }


def check_resumable(cfg: ExperimentConfig, meta: dict, where: str) -> str | None:
    """None if the checkpoint described by `meta` can continue `cfg`, else the one-line reason."""
    data = meta.get("data") or {}
    step = meta.get("step", "?")
    if "position" not in data:
        return (
            f"cannot resume {where} (step {step}): the checkpoint predates position-based data resume; "
            f"start a new run (another name or storage.path)"
        )
    now = resume_guard(cfg)
    for key in GUARDED:
        if data["guard"].get(key) != now[key]:
            what = "the data section changed" if key == "data" else f"{key} was {data['guard'].get(key)}, is {now[key]}"
            return (
                f"cannot resume {where} from step {step}: {what}; rerun with the original setting, or start "
                f"a new run (another name or storage.path)"
            )
    return None


@dataclass
class Feed:
    """This rank's batches and position (`batches()` yields (images, prefix_len or None) on `device`)."""

    stream: WorkerStream
    position: Position
    cfg: ExperimentConfig
    per_worker: int
    device: torch.device

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        cfg = self.cfg.aim_config()
        for images, slots in self.stream.batches(self.per_worker):
            with warnings.catch_warnings():  # a block's rows are read-only views; the step never writes them
                warnings.simplefilter("ignore", UserWarning)
                x = torch.from_numpy(images)
            prefix = None
            if cfg.attention == "prefix":
                prefix = torch.from_numpy(prefix_lengths(self.cfg.seed, slots, cfg.num_patches))
                if self.device.type == "cuda":
                    prefix = prefix.pin_memory()
                prefix = prefix.to(self.device, non_blocking=True)
            yield x.to(self.device, non_blocking=True), prefix

    def state(self, world: int) -> dict:
        """The position of every rank (collective: every rank calls it), for the checkpoint."""
        after = torch.tensor([self.stream.after], dtype=torch.int64, device=self.device)
        if world > 1:
            parts = [torch.zeros_like(after) for _ in range(world)]
            torch.distributed.all_gather(parts, after)
            after = torch.cat(parts)
        pos = Position(self.position.deal, [int(a) for a in after.cpu()])
        return {"position": pos.to_dict(), "guard": resume_guard(self.cfg)}


def open_feed(
    cfg: ExperimentConfig, plan, data_state: dict, step: int, rank: int, world: int, device: torch.device
) -> Feed:
    """This rank's stream from the position in `data_state` (a checkpoint's; empty: the start)."""
    world = max(world, 1)
    per_worker = cfg.optim.batch_size // world
    stops = plan.task_stops
    if data_state:
        position = Position.from_dict(data_state["position"]).resumed(world, step, stops)
    else:
        position = Position(Deal(0, world), [-1] * world)
    items = remaining(worker_items(position.deal, rank, len(stops)), position.after[rank], stops)
    ds = plan.dataset(items, share=world)
    blocks = ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2)
    shuffle = cfg.scaling.shuffle_buffer > 0
    window = cfg.scaling.shuffle_buffer or per_worker
    key = (cfg.seed, position.deal.origin_step, world, rank)
    consumed = (step - position.deal.origin_step) * per_worker
    stream = WorkerStream(blocks, window, shuffle, key, position.after[rank], consumed)
    return Feed(stream, position, cfg, per_worker, device)
