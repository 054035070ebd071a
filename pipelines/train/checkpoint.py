"""Training state <-> a checkpoint directory (`state.pt`, loaded with weights_only=True; `meta.json` last).

Two formats, named in `meta.json` (`format`, with the `strategy` and `world_size` that wrote it):
  full     `state.pt` holds everything, the model and optimizer unsharded (rank 0 writes it).
  sharded  (FSDP, large models) the model weights and optimizer tensors are a `torch.distributed.checkpoint`
           (DCP) directory `dcp/`, each rank writing its own shards; `state.pt` holds the rest (scheduler,
           optimizer param groups, step, data position, RNG). `load_state` reads either as a full state on CPU.

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

__all__ = [
    "TrainState",
    "save_state",
    "write_meta",
    "load_state",
    "read_state",
    "read_meta",
    "checkpoint_complete",
    "dcp_to_full",
    "persist_checkpoint",
    "run_storage",
    "STATE_FILE",
    "META_FILE",
    "LOCAL_PREFIX",
    "DCP_DIR",
]

STATE_FILE = "state.pt"
META_FILE = "meta.json"  # small: lets the driver find the latest checkpoint without loading it
LOCAL_PREFIX = "checkpoint_local_"  # checkpoints persisted by in-process runs (scaling.num_workers: 0)
DCP_DIR = "dcp"  # the sharded format's DCP checkpoint (model + optimizer tensors)


@dataclass
class TrainState:
    step: int = 0  # optimizer updates done
    data: dict = field(default_factory=dict)  # the data position (`pipelines.data.stream.Position.to_dict`)


def save_state(
    directory: str | Path,
    model_state: dict,
    optim_state: dict,
    sched_state: dict,
    state: TrainState,
    extra: dict | None = None,
    info: dict | None = None,
) -> Path:
    """Write atomically: a temp file renamed into place, so a crash never leaves a half-written state.

    `info` (format, strategy, world_size; default format "full") goes into `state.pt` and `meta.json`. For the
    sharded format the caller passes the model/optimizer tensors' place holders ({} / the param groups), writes
    the DCP directory first and `meta.json` (`write_meta`) once every rank's shards are there."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    info = {"format": "full", **(info or {})}
    payload = {
        "model": model_state,
        "optimizer": optim_state,
        "scheduler": sched_state,
        "step": state.step,
        "data": state.data,
        "torch_rng": torch.get_rng_state(),
        **(extra or {}),
        "format": info["format"],
    }
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
    os.close(fd)
    torch.save(payload, tmp)
    os.replace(tmp, directory / STATE_FILE)
    if info["format"] == "full":
        write_meta(directory, state, info)
    return directory / STATE_FILE


def write_meta(directory: str | Path, state: TrainState, info: dict) -> None:
    """`meta.json`, the last file of a checkpoint: step, data position, format, strategy, world size and, for
    the sharded format, `files` (every file the checkpoint needs, so a partly uploaded one is not taken)."""
    meta = {"step": state.step, "data": state.data, **info}
    tmp = Path(directory) / f".{META_FILE}.tmp"
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, Path(directory) / META_FILE)


def load_state(directory: str | Path, full: bool = True, optimizer: bool = True) -> dict:
    """The state in a checkpoint directory, on CPU. A sharded checkpoint's model (and, with `optimizer`, its
    optimizer tensors) are read from its DCP shards unless `full=False` (then "model" is {}: for FSDP, which
    loads the shards into its own sharded state, `state_io.restore_checkpoint`)."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {directory} has no {STATE_FILE}")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if full and saved.get("format") == "sharded":
        tensors = dcp_to_full(Path(directory) / DCP_DIR, optimizer)
        saved["model"] = tensors["model"]
        if optimizer:
            saved["optimizer"] = {**saved["optimizer"], "state": tensors["optimizer"]["state"]}
    return saved


class _TensorsOnly:
    """DCP load planner mix-in: a checkpoint's DCP part holds tensors only; a pickled item is refused rather
    than unpickled (DCP's default planner would `torch.load(weights_only=False)` it)."""

    def load_bytes(self, read_item, value) -> None:
        raise ValueError(f"sharded checkpoint: unexpected non-tensor item {read_item.dest_index.fqn!r}")


def dcp_to_full(dcp_dir: str | Path, optimizer: bool = True) -> dict:
    """A DCP checkpoint (`{"model": ..., "optimizer": {"state": ...}}`, any number of shards) as one full state
    dict of CPU tensors, in this process: no process group needed. This is `format_utils.dcp_to_torch_save`'s
    reader (torch 2.14) kept in memory and limited to the model when not `optimizer`; the public `dcp.load`
    cannot fill an empty dict."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    class Planner(_TensorsOnly, _EmptyStateDictLoadPlanner):
        pass

    out: dict = {}
    _load_state_dict(
        out,
        storage_reader=FileSystemReader(str(dcp_dir)),
        planner=Planner(keys=None if optimizer else {"model"}),
        no_dist=True,
    )
    out.setdefault("optimizer", {"state": {}})
    return out


def read_meta(directory: str | Path) -> dict:
    return json.loads((Path(directory) / META_FILE).read_text())


def run_storage(cfg) -> tuple:
    """(pyarrow filesystem or None for a local path, storage root) of an experiment's runs and checkpoints."""
    from pipelines.storage import resolve

    return resolve(cfg.storage.path, cfg.storage.s3)


def read_state(fs, ckpt_path: str, optimizer: bool = True) -> dict:
    """`load_state` (full, on CPU) of a checkpoint directory in storage: a local path (fs None) or a pyarrow
    filesystem path (copied to a temp directory first: `state.pt`, and the DCP shards if sharded)."""
    if fs is None:
        return load_state(ckpt_path, optimizer=optimizer)
    import pyarrow.fs as pafs

    with tempfile.TemporaryDirectory() as tmp:
        with fs.open_input_stream(f"{ckpt_path}/{STATE_FILE}") as src:
            Path(tmp, STATE_FILE).write_bytes(src.read())
        if fs.get_file_info(f"{ckpt_path}/{DCP_DIR}").type == pafs.FileType.Directory:
            Path(tmp, DCP_DIR).mkdir()
            pafs.copy_files(
                f"{ckpt_path}/{DCP_DIR}",
                str(Path(tmp, DCP_DIR)),
                source_filesystem=fs,
                destination_filesystem=pafs.LocalFileSystem(),
            )
        return load_state(tmp, optimizer=optimizer)


def checkpoint_complete(fs, ckpt_path: str, meta: dict) -> bool:
    """True unless `meta` lists files (sharded format) that are not (yet) all under `ckpt_path`: with Ray Train
    each rank uploads its own shards, so rank 0's `meta.json` may land before another rank's files."""
    import pyarrow.fs as pafs

    files = meta.get("files") or []
    if not files:
        return True
    fs = fs or pafs.LocalFileSystem()
    infos = fs.get_file_info([f"{ckpt_path.rstrip('/')}/{f}" for f in files])
    return all(i.type == pafs.FileType.File for i in infos)


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
        pafs.copy_files(
            str(Path(local_dir, fname).resolve()),
            f"{dest}/{fname}",
            source_filesystem=pafs.LocalFileSystem(),
            destination_filesystem=fs,
        )
    if local:
        if fs.get_file_info(final).type != pafs.FileType.NotFound:
            fs.delete_dir(final)
        fs.move(dest, final)
    infos = fs.get_file_info(pafs.FileSelector(run_dir, allow_not_found=True))
    mine = sorted(i.path for i in infos if i.type == pafs.FileType.Directory and i.base_name.startswith(LOCAL_PREFIX))
    for old in mine[:-keep]:
        fs.delete_dir(old)
    return final
