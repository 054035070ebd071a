"""Full (unsharded) model/optimizer state in and out, for DDP, single-process and FSDP2 alike."""

from __future__ import annotations

import torch

from pipelines.train.checkpoint import TrainState

__all__ = ["full_state", "restore"]


def full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, strategy: str) -> tuple[dict, dict]:
    if strategy != "fsdp":
        return model.state_dict(), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_state_dict(model, optimizer, options=opts)


def restore(saved: dict, model, optimizer, scheduler, strategy: str) -> TrainState:
    if strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        set_state_dict(model, optimizer, model_state_dict=saved["model"], optim_state_dict=saved["optimizer"],
                       options=StateDictOptions(full_state_dict=True))
    else:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["torch_rng"])
    return TrainState(step=int(saved["step"]), data=dict(saved.get("data") or {}))
