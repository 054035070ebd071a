"""Model/optimizer state in and out of checkpoints, for DDP, single-process and FSDP2 alike.

Full checkpoints hold the unsharded model and optimizer (rank 0 writes them); sharded ones (FSDP, large models)
hold them as a DCP directory that every rank writes its shards of (`checkpoint` module docstring). Either
format resumes under either strategy: a full state is loaded into an FSDP model with `set_state_dict`, a sharded
one into FSDP with `dcp.load` (resharding to the current world size) or read whole on CPU for DDP. Optimizer
states are keyed by parameter index (`optimizer.state_dict()`, DDP) or by parameter name (`get_state_dict`,
FSDP); `restore` converts between the two.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from pipelines.config import StorageSection
from pipelines.train.checkpoint import DCP_DIR, TrainState, load_state, save_state, write_meta

__all__ = [
    "full_state",
    "restore",
    "use_sharded",
    "write_checkpoint",
    "restore_checkpoint",
    "optim_to_names",
    "optim_to_ids",
]


def full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, strategy: str) -> tuple[dict, dict]:
    if strategy != "fsdp":
        return model.state_dict(), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_state_dict(model, optimizer, options=opts)


def use_sharded(storage: StorageSection, strategy: str, num_params: int) -> bool:
    """Sharded checkpoints need FSDP (DDP ranks hold the same whole model: rank 0 writes it); `storage.sharded`
    auto shards models of at least `storage.sharded_min_params` parameters, true always, false never."""
    if strategy != "fsdp" or storage.sharded is False:
        return False
    return storage.sharded is True or num_params >= storage.sharded_min_params


def _param_names(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The name of each optimizer parameter, in `optimizer.state_dict()`'s index order."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for g in optimizer.param_groups for p in g["params"]]


def _is_by_name(optim_sd: dict) -> bool:
    params = [p for g in optim_sd.get("param_groups", []) for p in g["params"]]
    return bool(params) and isinstance(params[0], str)


def optim_to_names(optim_sd: dict, names: list[str]) -> dict:
    """An index-keyed optimizer state dict (`optimizer.state_dict()`) keyed by parameter name instead."""
    if _is_by_name(optim_sd):
        return optim_sd
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in optim_sd["param_groups"]]
    return {"state": {names[i]: v for i, v in optim_sd["state"].items()}, "param_groups": groups}


def optim_to_ids(optim_sd: dict, names: list[str]) -> dict:
    """A name-keyed optimizer state dict (`get_state_dict`) keyed by parameter index, for `load_state_dict`."""
    if not _is_by_name(optim_sd):
        return optim_sd
    index = {n: i for i, n in enumerate(names)}
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in optim_sd["param_groups"]]
    return {"state": {index[n]: v for n, v in optim_sd["state"].items()}, "param_groups": groups}


def restore(saved: dict, model, optimizer, scheduler, strategy: str) -> TrainState:
    """Load a full state (from either strategy's checkpoint) into the model, optimizer and scheduler."""
    names = _param_names(model, optimizer)
    if strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        set_state_dict(
            model,
            optimizer,
            model_state_dict=saved["model"],
            optim_state_dict=optim_to_names(saved["optimizer"], names),
            options=StateDictOptions(full_state_dict=True),
        )
    else:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(optim_to_ids(saved["optimizer"], names))
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["torch_rng"])
    return TrainState(step=int(saved["step"]), data=dict(saved.get("data") or {}))


def _restore_sharded(directory: Path, saved: dict, model, optimizer, scheduler) -> TrainState:
    """FSDP from a sharded checkpoint: every rank reads the shards it needs (DCP reshards to this world size)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)  # this rank's shards: the templates to load into
    tensors = {"model": model_sd, "optimizer": {"state": optim_sd["state"]}}
    dcp.load(tensors, checkpoint_id=str(directory / DCP_DIR))
    optim_sd = {"state": tensors["optimizer"]["state"], "param_groups": saved["optimizer"]["param_groups"]}
    set_state_dict(model, optimizer, model_state_dict=tensors["model"], optim_state_dict=optim_sd)
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["torch_rng"])
    return TrainState(step=int(saved["step"]), data=dict(saved.get("data") or {}))


def restore_checkpoint(directory: str | Path, model, optimizer, scheduler, strategy: str) -> TrainState:
    """`restore` from a checkpoint directory of either format, under either strategy."""
    directory = Path(directory)
    saved = load_state(directory, full=False)
    if saved.get("format") == "sharded" and strategy == "fsdp":
        return _restore_sharded(directory, saved, model, optimizer, scheduler)
    return restore(
        load_state(directory) if saved.get("format") == "sharded" else saved, model, optimizer, scheduler, strategy
    )


def _save_sharded(
    directory: Path, model, optimizer, sched_state: dict, state: TrainState, rank: int, info: dict, extra: dict | None
) -> None:
    """Collective: every rank writes its DCP shards (`dcp/__<rank>_*.distcp`, rank 0 also `dcp/.metadata`);
    rank 0 then writes `state.pt` and, last, `meta.json` listing every rank's files."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optimizer": {"state": optim_sd["state"]}}, checkpoint_id=str(directory / DCP_DIR))
    mine = sorted(f"{DCP_DIR}/{f}" for f in os.listdir(directory / DCP_DIR))
    files: list = [None] * dist.get_world_size()
    dist.all_gather_object(files, mine)
    if rank == 0:
        groups = {"param_groups": optim_sd["param_groups"]}  # the optimizer's non-tensor part: in state.pt
        save_state(directory, {}, groups, sched_state, state, extra, info)
        write_meta(directory, state, {**info, "files": sorted({f for fs in files for f in fs} | {"state.pt"})})


def write_checkpoint(
    directory: str | Path,
    model,
    optimizer,
    scheduler,
    state: TrainState,
    strategy: str,
    rank: int,
    world: int,
    sharded: bool,
    extra: dict | None = None,
) -> bool:
    """Collective under FSDP (every rank calls it). Writes this rank's part of the checkpoint into `directory`
    (sharded: every rank; full: rank 0 only) and returns whether it wrote anything to report."""
    directory = Path(directory)
    info = {"format": "sharded" if sharded else "full", "strategy": strategy, "world_size": world}
    if sharded:
        _save_sharded(directory, model, optimizer, scheduler.state_dict(), state, rank, info, extra)
        return True
    model_sd, optim_sd = full_state(model, optimizer, strategy)  # collective under FSDP: every rank calls it
    if rank == 0:
        save_state(directory, model_sd, optim_sd, scheduler.state_dict(), state, extra, info)
    return rank == 0
