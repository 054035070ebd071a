"""`aimctl pretrain`: builds the data, the MLflow run and the TorchTrainer, then fits (resuming if it can)."""

from __future__ import annotations

import dataclasses
import json
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from pipelines import tracking
from pipelines.config import ExperimentConfig, flatten
from pipelines.data.raytools import init_ray
from pipelines.train.checkpoint import LOCAL_PREFIX, META_FILE, checkpoint_complete, read_state
from pipelines.train.checkpoint import run_storage as _storage  # the driver's short name
from pipelines.train.loop import LoopArgs, LoopHooks, TrainingError, train_loop_per_worker

__all__ = ["PretrainResult", "pretrain", "latest_checkpoint"]


@dataclass
class PretrainResult:
    run_id: str | None
    checkpoint_uri: str | None
    step: int
    resumed_from: int
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)  # samples skipped this attempt, by reason


SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"  # Ray Train's record of the checkpoints it registered


def _registered(fs, base: str) -> set[str] | None:
    """Checkpoint directory names Ray Train registered for this run, or None if it has no snapshot (yet)."""
    try:
        with fs.open_input_stream(f"{base}/{SNAPSHOT_FILE}") as f:
            snap = json.loads(f.read())
        return {r["checkpoint_dir_name"] for r in snap.get("checkpoint_results", [])}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def latest_checkpoint(cfg: ExperimentConfig) -> tuple[str | None, dict]:
    """The checkpoint with the highest step under <storage>/<name>, with its meta (no state loaded).

    Only checkpoints Ray Train registered count when it has written its snapshot: a directory uploaded by a
    worker (or driver) killed before the controller registered it may be incomplete, and Ray Train itself
    resumes from the registered one. A sharded checkpoint also needs every file its meta lists (each rank
    uploads its own shards)."""
    import pyarrow.fs as pafs

    fs, root = _storage(cfg)
    fs = fs or pafs.LocalFileSystem()
    base = f"{root.rstrip('/')}/{cfg.run_name}"
    try:
        infos = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    except OSError:
        return None, {}
    registered = _registered(fs, base) if any(i.base_name == SNAPSHOT_FILE for i in infos) else None
    best, best_meta = None, {}
    for info in infos:
        if info.type != pafs.FileType.Directory or not info.base_name.startswith("checkpoint_"):
            continue
        if registered is not None and info.base_name not in registered and not info.base_name.startswith(LOCAL_PREFIX):
            continue  # never registered: possibly half-written (in-process runs register nothing: meta.json last)
        try:
            with fs.open_input_stream(f"{info.path}/{META_FILE}") as f:
                meta = json.loads(f.read())
        except (OSError, ValueError):
            continue  # incomplete checkpoint: ignored
        if not checkpoint_complete(fs, info.path, meta):
            continue  # sharded, and some rank's shards are missing: ignored
        if meta.get("step", -1) > best_meta.get("step", -1):
            best, best_meta = info.path, meta
    return best, best_meta


def _open_run(cfg: ExperimentConfig, parent_run_id: str | None, extra_tags: dict[str, str]):
    if not cfg.tracking.enabled:
        return None, None, -1
    uri = tracking.resolve_tracking_uri(cfg.tracking.uri)
    c = tracking.client(uri)
    _, root = _storage(cfg)
    tags = {
        "git_commit": tracking.git_commit(Path(__file__).parent),
        "preset": cfg.model.preset,
        "target": cfg.aim_config().target,
        "attention": cfg.aim_config().attention,
        "order": cfg.aim_config().order,
        "head": cfg.aim_config().head,
        **cfg.tags,
        **extra_tags,
    }
    run_id, _ = tracking.get_or_create_run(
        c, cfg.tracking.experiment, f"{root}/{cfg.run_name}", cfg.run_name, tags, parent_run_id
    )
    c.update_run(run_id, status="RUNNING")
    params = flatten(cfg.model_dump(mode="json"))
    params.update({f"model.resolved.{k}": v for k, v in dataclasses.asdict(cfg.aim_config()).items()})
    tracking.log_params(c, run_id, params)
    return uri, run_id, tracking.last_logged_step(c, run_id)


def _progress(uri: str | None, run_id: str | None, total: int, stop: threading.Event, start: str) -> None:
    """Driver-side progress bar fed from the run's MLflow metrics (rank 0 logs them); `start` is shown until
    the first step is logged."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    if not uri or not run_id:
        return
    c = tracking.client(uri)
    with Progress(
        TextColumn("[bold]pretrain"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
        transient=False,
    ) as bar:
        task = bar.add_task("train", total=total, info=start)
        while not stop.wait(2.0):
            try:
                m = c.get_run(run_id).data.metrics
            except Exception:  # noqa: BLE001 - progress is best effort
                continue
            if "train/step" in m:
                bar.update(
                    task,
                    completed=int(m["train/step"]),
                    info=f"loss {m.get('train/loss', float('nan')):.4f}  {m.get('train/images_per_s', 0):.0f} img/s",
                )


def _fit_target(cfg: ExperimentConfig, plan) -> bytes | None:
    from aim_core import AIM, TARGET_TYPES
    from pipelines.train.target_fit import fit_target_state

    if not TARGET_TYPES[cfg.aim_config().target].needs_fit:
        return None

    batch = plan.dataset().take_batch(cfg.target.fit_images, batch_format="numpy")["image"]
    return fit_target_state(AIM(cfg.aim_config()), torch.tensor(batch), cfg.target.fit_steps, cfg.seed)


def _trainer(cfg: ExperimentConfig, args: LoopArgs, callbacks: list | None = None):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    fs, root = _storage(cfg)
    s = cfg.scaling
    resources = {"CPU": s.cpus_per_worker, **s.worker_resources}
    if s.use_gpu:
        resources["GPU"] = s.gpus_per_worker
    if s.num_workers == 0:  # Ray Train local mode: the loop runs in this process; no worker group, no retries
        scaling = ScalingConfig(num_workers=0)
    else:
        scaling = ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu, resources_per_worker=resources)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={f.name: getattr(args, f.name) for f in dataclasses.fields(args)},  # the ref as is
        scaling_config=scaling,
        run_config=RunConfig(
            name=cfg.run_name,
            storage_path=root,
            storage_filesystem=fs,
            failure_config=FailureConfig(max_failures=s.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.storage.keep),
            callbacks=callbacks,
        ),
    )  # no `datasets`: each worker reads its own share from its position (pipelines/train/feed.py)


def _log_outputs(cfg: ExperimentConfig, uri: str, run_id: str, ckpt_path: str, plan) -> None:
    """Resolved config, predictions PNG and the final checkpoint URI as artifacts of the run."""
    from aim_core import AIM
    from pipelines.train.viz import save_prediction_grid

    c = tracking.client(uri)
    fs, _ = _storage(cfg)
    ckpt_uri = ckpt_path if fs is None else f"s3://{ckpt_path}"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        (tmp / "checkpoint_uri.txt").write_text(ckpt_uri + "\n")
        model = AIM(cfg.aim_config())
        state = read_state(fs, ckpt_path, optimizer=False)  # full on CPU, sharded checkpoints too
        model.load_state_dict(state["model"])
        images = state.get("preview")  # the last training batch's first images, saved with the final checkpoint
        if images is None:  # checkpoints from before the preview was saved
            images = torch.tensor(plan.dataset().take_batch(4, batch_format="numpy")["image"])
        save_prediction_grid(model, images, tmp / "predictions.png")
        for name in ("config.yaml", "checkpoint_uri.txt", "predictions.png"):
            c.log_artifact(run_id, str(tmp / name))
    c.set_tag(run_id, "checkpoint_uri", ckpt_uri)


def _log_skipped(uri: str, run_id: str, quality: dict, step: int, sel=None) -> None:
    """Samples this attempt skipped (undecodable / listed but absent), as metrics `data/skipped_<reason>` at
    the attempt's last step (zeros too, so runs compare in the UI), and by shard in `data_quality.json`
    when there were any. Counts what the attempt's data stream read, which may run ahead of training.
    Pool rows never downloaded (img2dataset status != success) are `data/pool_not_downloaded[_<reason>]`."""
    from pipelines.data.quality import REASONS

    by_reason = quality["by_reason"]
    c = tracking.client(uri)
    log = tracking.MetricLogger(c, run_id)
    metrics = {f"data/skipped_{r}": by_reason.get(r, 0) for r in sorted(set(REASONS) | set(by_reason))}
    nd = sel.not_downloaded_by() if sel is not None else {}
    metrics["data/pool_not_downloaded"] = sum(nd.values())
    metrics.update({f"data/pool_not_downloaded_{r}": n for r, n in nd.items()})
    log.log(metrics, step)
    log.flush()
    if quality["by_shard"] or nd:
        by_shard = {n: dict(x.not_downloaded_by) for n, x in sel.counts.items() if x.not_downloaded} if nd else {}
        c.log_dict(run_id, {**quality, "not_downloaded_by_shard": by_shard}, "data_quality.json")


def quiet_data() -> None:
    """Ray Data's per-operator progress bars flood the console from every split coordinator."""
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False


def _plan(cfg: ExperimentConfig):
    """The run's read plan and the slots of one data epoch. It chains every data epoch the schedule reaches,
    each with its own order and crops, with room for every worker's share and shuffle window."""
    from pipelines.data.pipeline import plan_stream

    world = max(cfg.scaling.num_workers, 1)
    window = cfg.scaling.shuffle_buffer or cfg.optim.batch_size // world
    need = cfg.schedule.steps * cfg.optim.batch_size + 2 * world * window
    plan, sel, _, plans, _ = plan_stream(cfg.data, cfg.aim_config().img_size, cfg.seed, min_samples=need, world=world)
    return plan, plans[0].n_slots, sel


def pretrain(
    cfg: ExperimentConfig,
    *,
    stop_after: int | None = None,
    parent_run_id: str | None = None,
    extra_tags: dict[str, str] | None = None,
    show_progress: bool = True,
    callbacks: list | None = None,
    hooks: LoopHooks | None = None,
) -> PretrainResult:
    """Run (or resume) pre-training for `cfg`. Rerunning the same config continues from the latest checkpoint.

    `hooks` (picklable; default: none) is handed to every worker's loop (see `LoopHooks`)."""
    from pipelines.train.feed import check_resumable

    init_ray()
    quiet_data()
    ckpt, meta = latest_checkpoint(cfg)
    if ckpt and (why := check_resumable(cfg, meta, f"run {cfg.run_name!r}")):
        raise TrainingError(why)
    resumed_from = int(meta.get("step", 0))
    uri, run_id, logged = _open_run(cfg, parent_run_id, extra_tags or {})
    plan, epoch_slots, sel = _plan(cfg)
    target_state = None if ckpt else _fit_target(cfg, plan)
    args = _loop_args(cfg, plan, epoch_slots, ckpt, run_id, uri, logged, stop_after, target_state, hooks)
    result = _fit(cfg, args, callbacks, uri, run_id, show_progress)
    return _finish(cfg, result, plan, sel, uri, run_id, resumed_from)


def _loop_args(cfg, plan, epoch_slots, ckpt, run_id, uri, logged, stop_after, target_state, hooks) -> LoopArgs:
    """What every worker's loop receives (the stream plan goes through Ray's object store once)."""
    import ray

    extra = {"epoch_samples": epoch_slots}
    if cfg.scaling.num_workers == 0:  # in-process: the loop resumes and persists its checkpoints itself
        extra.update(local=True, resume_from=ckpt)
    return LoopArgs(
        experiment=cfg.model_dump(mode="json"),
        run_id=run_id,
        tracking_uri=uri,
        skip_log_until=logged,
        stop_after=stop_after,
        target_state=target_state,
        extra=extra,
        stream=ray.put(plan),
        hooks=hooks or LoopHooks(),
    )


def _fit(cfg: ExperimentConfig, args: LoopArgs, callbacks, uri, run_id, show_progress: bool):
    """Ray Train's fit with the driver's progress bar beside it; the MLflow run is FAILED if it raises."""
    stop = threading.Event()
    start = (
        "starting the data pipeline..."
        if cfg.scaling.num_workers == 0
        else f"starting {cfg.scaling.num_workers} training worker(s)..."
    )
    bar = threading.Thread(target=_progress, args=(uri, run_id, cfg.schedule.steps, stop, start), daemon=True)
    if show_progress:
        bar.start()
    try:
        return _trainer(cfg, args, callbacks).fit()
    except BaseException:
        if run_id:
            c = tracking.client(uri)
            # a sweep closes the run of a trial its scheduler stopped as KILLED: never turn that into FAILED
            if c.get_run(run_id).info.status != "KILLED":
                c.set_terminated(run_id, status="FAILED")
        raise
    finally:
        stop.set()
        if bar.is_alive():
            bar.join(timeout=5)


def _finish(cfg: ExperimentConfig, result, plan, sel, uri, run_id, resumed_from: int) -> PretrainResult:
    """The run's outcome: its last checkpoint and step, data quality and outputs logged, the MLflow run closed."""
    if cfg.scaling.num_workers == 0:
        ckpt_path, meta = latest_checkpoint(cfg)
        step = int(meta.get("step", resumed_from))
    else:
        ckpt_path = result.checkpoint.path if result.checkpoint else None
        step = int((result.metrics or {}).get("step", resumed_from))
    quality = plan.ctx.tracker.summary()
    if run_id:
        _log_skipped(uri, run_id, quality, step, sel)
    if run_id and ckpt_path:
        _log_outputs(cfg, uri, run_id, ckpt_path, plan)
        finished = step >= cfg.schedule.steps
        tracking.client(uri).set_terminated(run_id, status="FINISHED" if finished else "KILLED")
    fs, _ = _storage(cfg)
    uri_out = None if ckpt_path is None else (ckpt_path if fs is None else f"s3://{ckpt_path}")
    return PretrainResult(run_id, uri_out, step, resumed_from, dict(quality["by_reason"]))
