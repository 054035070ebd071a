"""Probe a checkpoint (or a random trunk) on the experiment's labelled data and log to its MLflow run."""

from __future__ import annotations

import torch
from rich.progress import Progress

from aim_core import AIM
from pipelines import tracking
from pipelines.config import ExperimentConfig
from pipelines.probe import ProbeResult, run_probes

__all__ = ["probe_checkpoint", "probe_device", "load_trunk"]


def load_trunk(cfg: ExperimentConfig, checkpoint: str | None) -> tuple[AIM, str]:
    """The model with the checkpoint's weights; `checkpoint=None` takes the run's latest."""
    from pipelines.model_io import load_weights
    from pipelines.storage import resolve
    from pipelines.train.checkpoint import read_state
    from pipelines.train.driver import latest_checkpoint

    if checkpoint is None:
        checkpoint, _ = latest_checkpoint(cfg)
        if checkpoint is None:
            raise FileNotFoundError(f"no checkpoint under {cfg.storage.path}/{cfg.name}: run `aimctl pretrain` first")
        fs, _ = resolve(cfg.storage.path, cfg.storage.s3)
    else:
        fs, path = resolve(checkpoint, cfg.storage.s3)
        checkpoint = path
    model = AIM(cfg.aim_config())
    # a run's checkpoint (full or sharded, read whole on the CPU), or one imported from ml-aim
    load_weights(model, read_state(fs, checkpoint, optimizer=False), checkpoint)
    return model, checkpoint


def probe_device(device: str = "auto") -> torch.device:
    """`auto`: the first GPU when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def probe_checkpoint(
    cfg: ExperimentConfig, checkpoint: str | None, random_init: bool = False, device: str = "auto"
) -> ProbeResult:
    """Features are extracted on `device`; the probes train on the cached features on the CPU."""
    from pipelines.data import load_labelled

    if random_init:
        torch.manual_seed(cfg.seed)
        model = AIM(cfg.aim_config())
    else:
        model, _ = load_trunk(cfg, checkpoint)
    model = model.to(probe_device(device))
    src = cfg.probe.data or cfg.data.curated.uri
    img = model.config.img_size
    # s3: the experiment's endpoint/region (a bare URI alone would fall back to AWS_ENDPOINT_URL or AWS itself)
    train = load_labelled(src, cfg.probe.train_split, img, limit=cfg.probe.train_limit, s3=cfg.data.s3)
    test = load_labelled(src, cfg.probe.test_split, img, limit=cfg.probe.test_limit, s3=cfg.data.s3)
    with Progress() as bar:
        task = bar.add_task("probe features", total=len(train[1]) + len(test[1]))
        res = run_probes(cfg, model, train, test, progress=lambda n: bar.advance(task, n))
    _log(cfg, res, random_init)
    return res


def _log(cfg: ExperimentConfig, res: ProbeResult, random_init: bool) -> None:
    if not cfg.tracking.enabled:
        return
    from pipelines.storage import resolve

    uri = tracking.resolve_tracking_uri(cfg.tracking.uri)
    c = tracking.client(uri)
    _, root = resolve(cfg.storage.path, cfg.storage.s3)
    run_id, _ = tracking.get_or_create_run(c, cfg.tracking.experiment, f"{root}/{cfg.run_name}", cfg.run_name)
    prefix = "probe_random_init" if random_init else "probe"
    log = tracking.MetricLogger(c, run_id)
    log.log({f"{prefix}/attentive_top1": res.attentive_top1, f"{prefix}/linear_top1": res.linear_top1}, 0)
    log.flush()
