"""The per-worker pre-training loop (runs inside each Ray Train worker; rank 0 logs to MLflow)."""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field

import ray.train
import ray.train.torch
import torch

from aim_core import AIM
from pipelines.config import ExperimentConfig
from pipelines.train import parallel
from pipelines.train.checkpoint import TrainState, load_state, save_state
from pipelines.train.optim import build_optimizer, build_scheduler
from pipelines.train.state_io import full_state, restore

__all__ = ["LoopArgs", "train_loop_per_worker", "NonFiniteLoss"]

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10G": 70e12}


class NonFiniteLoss(RuntimeError):
    pass


@dataclass
class LoopArgs:
    experiment: dict
    run_id: str | None = None
    tracking_uri: str | None = None
    skip_log_until: int = -1
    stop_after: int | None = None  # stop (with a checkpoint) once this many total steps are done
    target_state: bytes | None = None  # serialized fitted kmeans codebook / dVAE (see target_fit)
    extra: dict = field(default_factory=dict)


def _peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def _build(cfg: ExperimentConfig, args: LoopArgs, device: torch.device) -> AIM:
    torch.manual_seed(cfg.seed)  # identical initialisation on every rank
    model = AIM(cfg.aim_config())
    if args.target_state:
        from pipelines.train.target_fit import load_target_state

        load_target_state(model, args.target_state)
    return model.to(device)


class _Logger:
    """Rank-0 metrics to MLflow (batched), plus the numbers the loop reports to Ray."""

    def __init__(self, args: LoopArgs, rank: int) -> None:
        self.logger = None
        if rank == 0 and args.run_id and args.tracking_uri:
            from pipelines.tracking import MetricLogger, client

            self.logger = MetricLogger(client(args.tracking_uri), args.run_id, args.skip_log_until)

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.logger is not None:
            self.logger.log(metrics, step)
            self.logger.flush()


def train_loop_per_worker(raw_args: dict) -> None:
    args = LoopArgs(**raw_args)
    cfg = ExperimentConfig.model_validate(args.experiment)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device() if cfg.scaling.use_gpu else torch.device("cpu")
    if cfg.scaling.threads_per_worker:
        torch.set_num_threads(cfg.scaling.threads_per_worker)
    model = _build(cfg, args, device)
    strategy = parallel.choose_strategy(cfg.scaling, model.param_counts()["total"])
    forward = parallel.parallelize(model, strategy, world, cfg.scaling.compile)
    optimizer = build_optimizer(model, cfg.optim, fused=device.type == "cuda")
    scheduler = build_scheduler(optimizer, cfg.schedule)
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
    state = TrainState()
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = restore(load_state(d), model, optimizer, scheduler, generator, strategy)
    scheduler.step_update(state.step)
    _run(cfg, args, model, forward, optimizer, scheduler, generator, state, device, strategy, rank, world)


def _batches(cfg: ExperimentConfig, state: TrainState, per_worker: int, rank: int):
    """This worker's batches, epoch after epoch, from its Ray Train dataset shard.

    Each epoch re-reads the shard with a local shuffle seeded by (seed, epoch, rank): a new order every
    epoch, the same order on a rerun. A resumed run skips the batches of its epoch already consumed.
    Advances `state.epoch` / `state.batches_in_epoch` as it goes.
    """
    shard = ray.train.get_dataset_shard("train")
    while True:
        skip, produced = state.batches_in_epoch, 0
        seed = (cfg.seed * 1_000_003 + state.epoch * 1009 + rank) % (2**31)
        for i, batch in enumerate(shard.iter_torch_batches(
                batch_size=per_worker, drop_last=True, local_shuffle_buffer_size=cfg.scaling.shuffle_buffer or None,
                local_shuffle_seed=seed)):
            produced += 1
            if i < skip:
                continue
            state.batches_in_epoch = i + 1
            yield batch["image"]
        if produced == 0:
            raise RuntimeError(f"the training data has fewer than one batch of {per_worker} images per worker")
        state.epoch += 1
        state.batches_in_epoch = 0


def _run(cfg, args, model, forward, optimizer, scheduler, generator, state, device, strategy, rank, world):
    per_worker = cfg.optim.batch_size // max(world, 1)
    bf16 = parallel.use_bf16(cfg.scaling, device)
    log = _Logger(args, rank)
    flops = model.flops_per_image()["train"]
    peak = _peak_flops(device)
    last_ckpt = state.step
    loss_sum = torch.zeros((), device=device)
    bad = torch.zeros((), dtype=torch.bool, device=device)
    n_since, t0 = 0, time.perf_counter()
    for images in _batches(cfg, state, per_worker, rank):
        if state.step >= cfg.schedule.steps or (args.stop_after and state.step >= args.stop_after):
            break
        images = images.to(device, non_blocking=True)
        prefix_len = model.sample_prefix_len(images.shape[0], generator)
        with parallel.autocast(bf16, device):
            preds = forward(images, prefix_len)
        out = model.loss_from_predictions(images, preds, prefix_len)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        clip = cfg.optim.clip_grad or float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        state.step += 1
        scheduler.step_update(state.step)
        loss_sum += out.loss.detach()
        bad |= ~torch.isfinite(out.loss.detach())
        n_since += 1
        done = state.step >= cfg.schedule.steps or (args.stop_after and state.step >= args.stop_after)
        if state.step % cfg.tracking.log_every == 0 or done:
            loss = _reduce_mean(loss_sum / n_since, world)
            if bool(_reduce_any(bad, world)) or not math.isfinite(loss):
                raise NonFiniteLoss(f"non-finite loss at step {state.step}; last good checkpoint is step {last_ckpt}"
                                    " (lower optim.lr or enable clipping, then rerun to resume from it)")
            dt = time.perf_counter() - t0
            ips = n_since * cfg.optim.batch_size / dt
            metrics = {"train/loss": loss, "train/lr": optimizer.param_groups[0]["lr"],
                       "train/grad_norm": float(grad_norm), "train/images_per_s": ips,
                       "train/tokens_per_s": ips * model.config.num_patches, "train/epoch": state.epoch,
                       "train/step": state.step}
            if peak:
                metrics["train/mfu"] = flops * ips / (peak * world)
            log.log(metrics, state.step)
            loss_sum.zero_()
            n_since, t0 = 0, time.perf_counter()
        if state.step % cfg.storage.checkpoint_every == 0 or done:
            _checkpoint(model, optimizer, scheduler, generator, state, strategy, rank)
            last_ckpt = state.step
    if state.step < cfg.schedule.steps and not (args.stop_after and state.step >= args.stop_after):
        raise RuntimeError(f"the data ran out at step {state.step} of {cfg.schedule.steps}")


def _reduce_mean(x: torch.Tensor, world: int) -> float:
    if world > 1:
        x = x.clone()
        torch.distributed.all_reduce(x)
        x /= world
    return float(x)


def _reduce_any(x: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        x = x.to(torch.int32)
        torch.distributed.all_reduce(x, op=torch.distributed.ReduceOp.MAX)
    return x.bool()


def _checkpoint(model, optimizer, scheduler, generator, state, strategy, rank) -> None:
    model_sd, optim_sd = full_state(model, optimizer, strategy)  # collective under FSDP: every rank calls it
    metrics = {"step": state.step, "epoch": state.epoch}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            save_state(tmp, model_sd, optim_sd, scheduler.state_dict(), state, generator)
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint)
