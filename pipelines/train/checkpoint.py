"""Training state <-> a checkpoint directory (one `state.pt`, loaded with weights_only=True).

The state holds the model (unwrapped, full), optimizer, scheduler, global step, epoch, batches consumed in
that epoch, and RNG states, so a rerun continues exactly where the checkpoint was taken.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["TrainState", "save_state", "load_state", "STATE_FILE", "META_FILE"]

STATE_FILE = "state.pt"
META_FILE = "meta.json"  # small: lets the driver find the latest checkpoint without loading it


@dataclass
class TrainState:
    step: int = 0  # optimizer updates done
    epoch: int = 0  # pass over the training dataset (which chains every data epoch the schedule needs)
    batches_in_epoch: int = 0  # batches of that pass already consumed (this worker)


def save_state(directory: str | Path, model_state: dict, optim_state: dict, sched_state: dict,
               state: TrainState, generator: torch.Generator, extra: dict | None = None) -> Path:
    """Write atomically: a temp file renamed into place, so a crash never leaves a half-written state."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    payload = {
        "model": model_state, "optimizer": optim_state, "scheduler": sched_state,
        "step": state.step, "epoch": state.epoch, "batches_in_epoch": state.batches_in_epoch,
        "torch_rng": torch.get_rng_state(), "prefix_rng": generator.get_state(), **(extra or {}),
    }
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
    os.close(fd)
    torch.save(payload, tmp)
    os.replace(tmp, directory / STATE_FILE)
    meta = {"step": state.step, "epoch": state.epoch, "batches_in_epoch": state.batches_in_epoch}
    (directory / META_FILE).write_text(json.dumps(meta))
    return directory / STATE_FILE


def load_state(directory: str | Path) -> dict:
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {directory} has no {STATE_FILE}")
    return torch.load(path, map_location="cpu", weights_only=True)
