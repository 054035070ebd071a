"""`aimctl pretrain` and `aimctl probe`."""

from __future__ import annotations

from pathlib import Path

import typer

from pipelines.cli_common import console, fail, load_or_exit, user_error

SET_HELP = "override a config value, e.g. --set optim.lr=5e-4 (repeatable)"


def pretrain(
    experiment: Path = typer.Argument(..., help="experiment YAML, e.g. experiments/cifar10-tiny.yaml"),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    address: str = typer.Option(
        None, "--address", envvar="RAY_ADDRESS", help="Ray cluster address (default: local Ray)"
    ),
    stop_after: int = typer.Option(
        None, "--stop-after", help="stop (with a checkpoint) after this many total steps; rerun to continue"
    ),
) -> None:
    """Pre-train AIM with Ray Train (DDP/FSDP), tracked in MLflow. Rerunning the same command resumes."""
    cfg = load_or_exit(experiment, set_)
    from pipelines.data.raytools import init_ray
    from pipelines.train.driver import pretrain as run

    init_ray(address)
    try:
        res = run(cfg, stop_after=stop_after)
    except Exception as e:  # noqa: BLE001 - data, storage and training errors become one line (exit 1)
        msg = user_error(e)
        if msg is None:
            raise
        fail(msg + _resume_hint(cfg), code=1)
    verb = f"resumed from step {res.resumed_from}, " if res.resumed_from else ""
    console.print(
        f"[green]pretrain[/] {cfg.name}: {verb}at step {res.step}; checkpoint {res.checkpoint_uri}; "
        f"MLflow run {res.run_id}",
        highlight=False,
    )
    if res.skipped:  # counts what the data stream read this attempt (by shard: data_quality.json in the run)
        what = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in sorted(res.skipped.items()))
        console.print(f"[yellow]skipped samples[/]: {what} (within data.max_bad_fraction)", highlight=False)


def _resume_hint(cfg) -> str:
    from pipelines.train.driver import latest_checkpoint

    try:
        path, meta = latest_checkpoint(cfg)
    except Exception:  # noqa: BLE001 - the hint is best effort (storage may be the thing that failed)
        return ""
    if path and cfg.storage.path.startswith("s3://"):
        path = f"s3://{path}"
    return f" [latest checkpoint: step {meta.get('step')} at {path}; rerun to resume]" if path else ""


def probe(
    experiment: Path = typer.Argument(..., help="the experiment YAML the checkpoint was trained with"),
    checkpoint: str = typer.Option(
        None,
        "--checkpoint",
        help="checkpoint directory (local or s3://): a run's, "
        "or one written by `aimctl model import`; default: the run's latest",
    ),
    random_init: bool = typer.Option(
        False, "--random-init", help="probe a randomly initialised trunk of the same shape (baseline)"
    ),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    device: str = typer.Option("auto", "--device", help="feature extraction: auto (GPU if any), cpu, cuda, cuda:N"),
) -> None:
    """Attentive + linear probes on the frozen trunk; top-1 logged to the pre-training's MLflow run."""
    cfg = load_or_exit(experiment, set_)
    from pipelines.model_io import CheckpointError
    from pipelines.probe_runner import probe_checkpoint

    try:
        res = probe_checkpoint(cfg, checkpoint, random_init=random_init, device=device)
    except (FileNotFoundError, CheckpointError) as e:
        fail(str(e))
    label = "random-init trunk" if random_init else "pretrained trunk"
    console.print(
        f"[green]probe[/] {cfg.name} ({label}, blocks {res.blocks}, {res.num_train} train / "
        f"{res.num_test} test): attentive top-1 {res.attentive_top1:.2f}%, linear top-1 "
        f"{res.linear_top1:.2f}%",
        highlight=False,
    )
