"""Training state <-> a checkpoint directory (one `state.pt`, loaded with weights_only=True).

The state holds the model (unwrapped, full), optimizer, scheduler, global step, the data position (which
rows every worker has consumed, `pipelines.data.stream`) and the torch RNG state, so a rerun continues
exactly where the checkpoint was taken without re-reading the data before it.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

__all__ = ["TrainState", "save_state", "load_state", "read_state", "persist_checkpoint", "run_storage", "STATE_FILE",
           "META_FILE", "LOCAL_PREFIX"]

STATE_FILE = "state.pt"
META_FILE = "meta.json"  # small: lets the driver find the latest checkpoint without loading it
LOCAL_PREFIX = "checkpoint_local_"  # checkpoints persisted by in-process runs (scaling.num_workers: 0)


@dataclass
class TrainState:
    step: int = 0  # optimizer updates done
    data: dict = field(default_factory=dict)  # the data position (`pipelines.data.stream.Position.to_dict`)


def save_state(directory: str | Path, model_state: dict, optim_state: dict, sched_state: dict,
               state: TrainState, extra: dict | None = None) -> Path:
    """Write atomically: a temp file renamed into place, so a crash never leaves a half-written state."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    payload = {
        "model": model_state, "optimizer": optim_state, "scheduler": sched_state,
        "step": state.step, "data": state.data, "torch_rng": torch.get_rng_state(), **(extra or {}),
    }
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
    os.close(fd)
    torch.save(payload, tmp)
    os.replace(tmp, directory / STATE_FILE)
    meta = {"step": state.step, "data": state.data}
    (directory / META_FILE).write_text(json.dumps(meta))
    return directory / STATE_FILE


def load_state(directory: str | Path) -> dict:
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {directory} has no {STATE_FILE}")
    return torch.load(path, map_location="cpu", weights_only=True)


def run_storage(cfg) -> tuple:
    """(pyarrow filesystem or None for a local path, storage root) of an experiment's runs and checkpoints."""
    from pipelines.data.storage import resolve

    return resolve(cfg.storage.path, cfg.data.s3)


def read_state(fs, ckpt_path: str) -> dict:
    """`load_state` of a checkpoint directory in storage: a local path (fs None) or a pyarrow filesystem path."""
    if fs is None:
        return load_state(ckpt_path)
    with tempfile.TemporaryDirectory() as tmp:
        with fs.open_input_stream(f"{ckpt_path}/{STATE_FILE}") as src:
            Path(tmp, STATE_FILE).write_bytes(src.read())
        return load_state(tmp)


def persist_checkpoint(local_dir: str | Path, fs, run_dir: str, step: int, keep: int) -> str:
    """Copy a checkpoint written by `save_state` to `<run_dir>/checkpoint_local_<step>` and keep the newest `keep`.

    What Ray Train's storage does for worker groups, for in-process runs (Ray Train local mode persists
    nothing). `meta.json` is written last and a directory without it is ignored by the driver, so a copy cut
    short is never taken for a checkpoint; on a local disk the directory is also renamed into place whole."""
    import pyarrow.fs as pafs

    fs = fs or pafs.LocalFileSystem()
    name = f"{LOCAL_PREFIX}{step:010d}"
    final = f"{run_dir.rstrip('/')}/{name}"
    local = isinstance(fs, pafs.LocalFileSystem)
    dest = f"{run_dir.rstrip('/')}/.{name}.tmp" if local else final
    fs.create_dir(dest, recursive=True)
    for fname in (STATE_FILE, META_FILE):  # meta last
        pafs.copy_files(str(Path(local_dir, fname).resolve()), f"{dest}/{fname}",
                        source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    if local:
        if fs.get_file_info(final).type != pafs.FileType.NotFound:
            fs.delete_dir(final)
        fs.move(dest, final)
    infos = fs.get_file_info(pafs.FileSelector(run_dir, allow_not_found=True))
    mine = sorted(i.path for i in infos if i.type == pafs.FileType.Directory and i.base_name.startswith(LOCAL_PREFIX))
    for old in mine[:-keep]:
        fs.delete_dir(old)
    return final
