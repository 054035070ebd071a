"""The per-worker pre-training loop (runs inside each Ray Train worker; rank 0 logs to MLflow)."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray.train
import ray.train.torch
import torch

from aim_core import AIM
from pipelines.config import ExperimentConfig
from pipelines.train import parallel
from pipelines.train.checkpoint import TrainState, persist_checkpoint, read_state, run_storage
from pipelines.train.feed import Feed, open_feed
from pipelines.train.optim import build_optimizer, build_scheduler
from pipelines.train.state_io import restore, restore_checkpoint, use_sharded, write_checkpoint

__all__ = ["LoopArgs", "LoopContext", "LoopHooks", "train_loop_per_worker", "TrainingError", "NonFiniteLoss"]

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10G": 70e12}


class LoopHooks:
    """Points where a caller can watch or alter the loop (the reliability tests inject faults with a subclass).

    The defaults do nothing. An instance travels to every worker inside `LoopArgs`, so a subclass must be
    picklable: defined at the top level of a module the workers can import, or of one registered with
    `ray.cloudpickle.register_pickle_by_value` (as tests/reliability/fault_hooks.py is)."""

    def on_start(self, rank: int, step: int) -> None:
        """Called on every rank each time the loop (re)starts, with the step it resumes from (0: fresh)."""

    def transform_loss(self, step: int, loss: torch.Tensor) -> torch.Tensor:
        """The loss of `step` (1-based) as it goes into backward; returns it unchanged."""
        return loss


class TrainingError(RuntimeError):
    """A training failure with a message meant for the user (the CLI prints it as one line)."""


class NonFiniteLoss(TrainingError):
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
    stream: object = None  # the run's StreamPlan (pipelines.data.pipeline), or an object ref to it
    hooks: LoopHooks = field(default_factory=LoopHooks)


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
            from pipelines.tracking import MetricLogger, client, last_logged_step

            c = client(args.tracking_uri)
            # After a worker failure Ray Train restarts this function from the last checkpoint: steps the
            # failed attempt already logged are skipped, so the history never holds a step twice.
            skip = max(args.skip_log_until, last_logged_step(c, args.run_id))
            self.logger = MetricLogger(c, args.run_id, skip)
            # where this attempt's rank 0 runs (a node id), to find the node of a failed attempt in Ray's logs
            c.set_tag(args.run_id, "ray.rank0_node", ray.get_runtime_context().get_node_id())

        self.once: dict[str, float] = {}  # the attempt's own numbers: sent with the first step not skipped

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.logger is not None:
            if self.once and step > self.logger.skip_until:
                metrics, self.once = {**metrics, **self.once}, {}
            self.logger.log(metrics, step)
            self.logger.flush()


@dataclass
class LoopContext:
    """What one worker's loop works with, built once per (re)start by `train_loop_per_worker`."""

    cfg: ExperimentConfig
    args: LoopArgs
    model: AIM
    forward: Callable  # the (DDP/FSDP/compiled) forward: forward(images, prefix_len) -> predictions
    optimizer: torch.optim.Optimizer
    scheduler: Any  # timm scheduler: step_update(step)
    feed: Feed
    state: TrainState
    device: torch.device
    strategy: str  # "ddp" | "fsdp"
    rank: int
    world: int

    @property
    def local(self) -> bool:
        """In-process (Ray Train local mode): one process, no worker group, the loop persists checkpoints."""
        return bool(self.args.extra.get("local"))

    def finished(self) -> bool:
        """The schedule is done, or `stop_after` steps are."""
        stop = self.args.stop_after
        return self.state.step >= self.cfg.schedule.steps or bool(stop and self.state.step >= stop)


@dataclass
class _Window:
    """What the loop accumulates between two logs (loss, throughput) and since the (re)start (non-finite)."""

    device: torch.device
    last_ckpt: int  # the checkpoint this attempt started from (0: none), then the last one written
    resumed_from: int  # the step this attempt started from (0: fresh)
    loss_sum: torch.Tensor = field(init=False)
    bad: torch.Tensor = field(init=False)
    first_bad: torch.Tensor = field(init=False)  # first step with a non-finite loss here
    n_since: int = 0
    t0: float = field(init=False)
    first_log: bool = True
    first_batch_s: float | None = None  # seconds from the loop's start to its first batch (this attempt)

    def __post_init__(self) -> None:
        self.loss_sum = torch.zeros((), device=self.device)
        self.bad = torch.zeros((), dtype=torch.bool, device=self.device)
        self.first_bad = torch.zeros((), dtype=torch.int64, device=self.device)
        self.t0 = time.perf_counter()

    def add(self, loss: torch.Tensor, step: int) -> None:
        self.loss_sum += loss
        step_bad = ~torch.isfinite(loss)
        self.first_bad = torch.where(step_bad & ~self.bad, torch.full_like(self.first_bad, step), self.first_bad)
        self.bad |= step_bad
        self.n_since += 1

    def restart(self) -> None:
        self.loss_sum.zero_()
        self.n_since, self.t0 = 0, time.perf_counter()


def train_loop_per_worker(raw_args: dict) -> None:
    _run(_context(LoopArgs(**raw_args)))


def _device(cfg: ExperimentConfig, local: bool) -> torch.device:
    if not cfg.scaling.use_gpu:
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device()) if local else ray.train.torch.get_device()


def _context(args: LoopArgs) -> LoopContext:
    """Model, parallelism, optimizer, resumed state and data feed of this worker."""
    cfg = ExperimentConfig.model_validate(args.experiment)
    tc = ray.train.get_context()
    rank, world = tc.get_world_rank(), tc.get_world_size()
    local = bool(args.extra.get("local"))  # in-process (Ray Train local mode): one process, no group
    device = _device(cfg, local)
    if cfg.scaling.threads_per_worker:
        torch.set_num_threads(cfg.scaling.threads_per_worker)
    model = _build(cfg, args, device)
    strategy = parallel.choose_strategy(cfg.scaling, model.param_counts()["total"])
    forward = parallel.parallelize(model, strategy, world, cfg.scaling.compile, parallel.use_bf16(cfg.scaling, device))
    optimizer = build_optimizer(model, cfg.optim, fused=device.type == "cuda")
    scheduler = build_scheduler(optimizer, cfg.schedule)
    state = TrainState()
    if local:  # local mode keeps no checkpoints: the driver names the one to resume from
        if args.extra.get("resume_from"):
            saved = read_state(run_storage(cfg)[0], args.extra["resume_from"])
            state = restore(saved, model, optimizer, scheduler, strategy)
    elif (ckpt := ray.train.get_checkpoint()) is not None:
        with ckpt.as_directory() as d:
            state = restore_checkpoint(d, model, optimizer, scheduler, strategy)  # full or sharded
    scheduler.step_update(state.step)
    args.hooks.on_start(rank, state.step)
    feed = open_feed(cfg, _plan(args.stream), state.data, state.step, rank, world, device)
    return LoopContext(cfg, args, model, forward, optimizer, scheduler, feed, state, device, strategy, rank, world)


def _plan(stream):
    import ray

    return ray.get(stream) if isinstance(stream, ray.ObjectRef) else stream


def _run(ctx: LoopContext) -> None:
    cfg, state = ctx.cfg, ctx.state
    bf16 = parallel.use_bf16(cfg.scaling, ctx.device)
    log = _Logger(ctx.args, ctx.rank)
    win = _Window(ctx.device, last_ckpt=state.step, resumed_from=state.step)
    for images, prefix_len in ctx.feed.batches():
        if win.first_batch_s is None:  # the data pipeline's start: its first batch after the loop asked
            win.first_batch_s = time.perf_counter() - win.t0
        if ctx.finished():
            break
        loss_t, grad_norm = _step(ctx, images, prefix_len, bf16)
        win.add(loss_t.detach(), state.step)
        done = ctx.finished()
        log_now = state.step % cfg.tracking.log_every == 0 or done
        ckpt_now = state.step % cfg.storage.checkpoint_every == 0 or done
        if log_now or ckpt_now:  # every checkpoint is preceded by this check, whatever log_every is
            _check_finite(ctx.model if ckpt_now else None, win.bad, win.first_bad, state.step, win.last_ckpt, ctx.world)
        if log_now:
            metrics = _metrics(ctx, win, grad_norm)
            if win.first_log:  # where this attempt started, and the rows it decoded and dropped to rebuild a
                # resumed shuffle window (rank 0's): sent with the first step the run's history does not hold yet
                log.once = {
                    "train/resumed_from": win.resumed_from,
                    "data/resume_discarded_rows": ctx.feed.stream.discarded,
                    "data/first_batch_s": win.first_batch_s,
                }
                win.first_log = False
            log.log(metrics, state.step)
            win.restart()
        if ckpt_now:
            preview = images[:4].detach().cpu() if done else None  # for the run's predictions PNG
            state.data = ctx.feed.state(ctx.world)  # collective: every rank's position
            _checkpoint(ctx, preview)
            win.last_ckpt = state.step
    if not ctx.finished():
        raise TrainingError(f"the data ran out at step {state.step} of {cfg.schedule.steps}")


def _step(ctx: LoopContext, images: torch.Tensor, prefix_len, bf16: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step; returns (the loss that went into backward, the gradient norm before clipping)."""
    with parallel.autocast(bf16, ctx.device):
        preds = ctx.forward(images, prefix_len)
    out = ctx.model.loss_from_predictions(images, preds, prefix_len)
    loss_t = ctx.args.hooks.transform_loss(ctx.state.step + 1, out.loss)
    ctx.optimizer.zero_grad(set_to_none=True)
    loss_t.backward()
    clip = ctx.cfg.optim.clip_grad or float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(ctx.model.parameters(), clip)
    ctx.optimizer.step()
    ctx.state.step += 1
    ctx.scheduler.step_update(ctx.state.step)
    return loss_t, grad_norm


def _metrics(ctx: LoopContext, win: _Window, grad_norm: torch.Tensor) -> dict[str, float]:
    """The logged metrics of the window since the last log (collective: the loss is averaged over ranks)."""
    cfg, step = ctx.cfg, ctx.state.step
    loss = _reduce_mean(win.loss_sum / win.n_since, ctx.world)
    ips = win.n_since * cfg.optim.batch_size / (time.perf_counter() - win.t0)
    epoch_samples = max(1, int(ctx.args.extra.get("epoch_samples", 1)))  # data epochs done, for the metric
    metrics = {
        "train/loss": loss,
        "train/lr": ctx.optimizer.param_groups[0]["lr"],
        "train/grad_norm": float(grad_norm),
        "train/images_per_s": ips,
        "train/tokens_per_s": ips * ctx.model.config.num_patches,
        "train/epoch": step * cfg.optim.batch_size / epoch_samples,
        "train/step": step,
    }
    if peak := _peak_flops(ctx.device):
        metrics["train/mfu"] = ctx.model.flops_per_image()["train"] * ips / (peak * ctx.world)
    return metrics


def _params_finite(model) -> torch.Tensor:
    """True if every parameter (this rank's shard under FSDP) is finite; a 0-d bool tensor."""
    checks = [
        torch.isfinite((p.to_local() if hasattr(p, "to_local") else p).detach()).all() for p in model.parameters()
    ]
    return torch.stack(checks).all().cpu() if checks else torch.ones((), dtype=torch.bool)


def _check_finite(model, bad: torch.Tensor, first_bad: torch.Tensor, step: int, last_ckpt: int, world: int) -> None:
    """Collective: raise NonFiniteLoss on every rank if any rank saw a non-finite loss since the run (re)started,
    or (with `model`, before a checkpoint) holds a non-finite weight. Nothing poisoned is ever checkpointed."""
    flag = bad.cpu()
    if model is not None:
        flag = flag | ~_params_finite(model)
    if not bool(_reduce_any(flag.to(bad.device), world)):
        return
    first = int(first_bad)
    what = f"non-finite loss at step {first}" if first else "non-finite loss or weights"
    where = f"step {last_ckpt}" if last_ckpt else "none (no checkpoint was written yet)"
    raise NonFiniteLoss(
        f"{what}; stopped at step {step} without writing a checkpoint; last good checkpoint: "
        f"{where}. Lower optim.lr or set optim.clip_grad, then rerun to resume from it"
    )


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


def _checkpoint(ctx: LoopContext, preview: torch.Tensor | None) -> None:
    """Collective: full (rank 0 writes) or sharded (each rank reports its own shards; Ray Train merges them)."""
    cfg, model, state = ctx.cfg, ctx.model, ctx.state
    metrics = {"step": state.step}
    extra = {"preview": preview} if preview is not None else None
    sharded = use_sharded(cfg.storage, ctx.strategy, model.param_counts()["total"])
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        written = write_checkpoint(
            tmp, model, ctx.optimizer, ctx.scheduler, state, ctx.strategy, ctx.rank, ctx.world, sharded, extra
        )
        if written:
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        if ctx.local:  # Ray Train's local mode would drop it: persist it like Ray Train storage
            fs, root = run_storage(cfg)
            persist_checkpoint(tmp, fs, f"{root.rstrip('/')}/{cfg.run_name}", state.step, cfg.storage.keep)
        else:
            ray.train.report(metrics, checkpoint=checkpoint)
