"""The per-worker pre-training loop (runs inside each Ray Train worker; rank 0 logs to MLflow)."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field

import ray.train
import ray.train.torch
import torch

from aim_core import AIM
from pipelines.config import ExperimentConfig
from pipelines.train import parallel
from pipelines.train.checkpoint import TrainState, persist_checkpoint, read_state, run_storage
from pipelines.train.feed import open_feed
from pipelines.train.optim import build_optimizer, build_scheduler
from pipelines.train.state_io import restore, restore_checkpoint, use_sharded, write_checkpoint

__all__ = ["LoopArgs", "LoopHooks", "train_loop_per_worker", "TrainingError", "NonFiniteLoss"]

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


def train_loop_per_worker(raw_args: dict) -> None:
    args = LoopArgs(**raw_args)
    cfg = ExperimentConfig.model_validate(args.experiment)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    local = bool(args.extra.get("local"))  # in-process (Ray Train local mode): one process, no group
    if not cfg.scaling.use_gpu:
        device = torch.device("cpu")
    else:
        device = torch.device("cuda", torch.cuda.current_device()) if local else ray.train.torch.get_device()
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
    _run(cfg, args, model, forward, optimizer, scheduler, feed, state, device, strategy, rank, world)


def _plan(stream):
    import ray

    return ray.get(stream) if isinstance(stream, ray.ObjectRef) else stream


def _run(cfg, args, model, forward, optimizer, scheduler, feed, state, device, strategy, rank, world):
    bf16 = parallel.use_bf16(cfg.scaling, device)
    log = _Logger(args, rank)
    flops = model.flops_per_image()["train"]
    peak = _peak_flops(device)
    last_ckpt = resumed_from = state.step  # the checkpoint this attempt started from (0: none)
    loss_sum = torch.zeros((), device=device)
    bad = torch.zeros((), dtype=torch.bool, device=device)
    first_bad = torch.zeros((), dtype=torch.int64, device=device)  # first step with a non-finite loss here
    epoch_samples = max(1, int(args.extra.get("epoch_samples", 1)))  # data epochs done, for the metric
    n_since, t0, first_log = 0, time.perf_counter(), True
    for images, prefix_len in feed.batches():
        if state.step >= cfg.schedule.steps or (args.stop_after and state.step >= args.stop_after):
            break
        with parallel.autocast(bf16, device):
            preds = forward(images, prefix_len)
        out = model.loss_from_predictions(images, preds, prefix_len)
        loss_t = args.hooks.transform_loss(state.step + 1, out.loss)
        optimizer.zero_grad(set_to_none=True)
        loss_t.backward()
        clip = cfg.optim.clip_grad or float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        state.step += 1
        scheduler.step_update(state.step)
        loss_sum += loss_t.detach()
        step_bad = ~torch.isfinite(loss_t.detach())
        first_bad = torch.where(step_bad & ~bad, torch.full_like(first_bad, state.step), first_bad)
        bad |= step_bad
        n_since += 1
        done = state.step >= cfg.schedule.steps or (args.stop_after and state.step >= args.stop_after)
        log_now = state.step % cfg.tracking.log_every == 0 or done
        ckpt_now = state.step % cfg.storage.checkpoint_every == 0 or done
        if log_now or ckpt_now:  # every checkpoint is preceded by this check, whatever log_every is
            _check_finite(model if ckpt_now else None, bad, first_bad, state.step, last_ckpt, world)
        if log_now:
            loss = _reduce_mean(loss_sum / n_since, world)
            dt = time.perf_counter() - t0
            ips = n_since * cfg.optim.batch_size / dt
            metrics = {
                "train/loss": loss,
                "train/lr": optimizer.param_groups[0]["lr"],
                "train/grad_norm": float(grad_norm),
                "train/images_per_s": ips,
                "train/tokens_per_s": ips * model.config.num_patches,
                "train/epoch": state.step * cfg.optim.batch_size / epoch_samples,
                "train/step": state.step,
            }
            if peak:
                metrics["train/mfu"] = flops * ips / (peak * world)
            if first_log:  # where this attempt started, and the rows it decoded and dropped to rebuild a resumed
                # shuffle window (rank 0's); logged with the first step the run's history does not hold yet
                log.once = {"train/resumed_from": resumed_from, "data/resume_discarded_rows": feed.stream.discarded}
                first_log = False
            log.log(metrics, state.step)
            loss_sum.zero_()
            n_since, t0 = 0, time.perf_counter()
        if ckpt_now:
            preview = images[:4].detach().cpu() if done else None  # for the run's predictions PNG
            state.data = feed.state(world)  # collective: every rank's position
            _checkpoint(cfg, args, model, optimizer, scheduler, state, strategy, rank, world, preview)
            last_ckpt = state.step
    if state.step < cfg.schedule.steps and not (args.stop_after and state.step >= args.stop_after):
        raise TrainingError(f"the data ran out at step {state.step} of {cfg.schedule.steps}")


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


def _checkpoint(cfg, args, model, optimizer, scheduler, state, strategy, rank, world, preview) -> None:
    """Collective: full (rank 0 writes) or sharded (each rank reports its own shards; Ray Train merges them)."""
    metrics = {"step": state.step}
    extra = {"preview": preview} if preview is not None else None
    sharded = use_sharded(cfg.storage, strategy, model.param_counts()["total"])
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if write_checkpoint(tmp, model, optimizer, scheduler, state, strategy, rank, world, sharded, extra):
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        if args.extra.get("local"):  # Ray Train's local mode would drop it: persist it like Ray Train storage
            fs, root = run_storage(cfg)
            persist_checkpoint(tmp, fs, f"{root.rstrip('/')}/{cfg.run_name}", state.step, cfg.storage.keep)
        else:
            ray.train.report(metrics, checkpoint=checkpoint)
