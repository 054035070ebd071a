"""Distribution, precision and compile, applied to the model from outside (torchtitan-style)."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from pipelines.config import ScalingSection

__all__ = ["choose_strategy", "parallelize", "autocast", "use_bf16", "unwrap"]

FSDP_MIN_PARAMS = 300_000_000  # "large presets": FSDP2 when the model would crowd one GPU with AdamW


def choose_strategy(scaling: ScalingSection, num_params: int) -> str:
    if scaling.strategy != "auto":
        return scaling.strategy
    if scaling.num_workers == 0:  # one process, no group to shard over
        return "ddp"
    return "fsdp" if scaling.use_gpu and num_params >= FSDP_MIN_PARAMS else "ddp"


def use_bf16(scaling: ScalingSection, device: torch.device) -> bool:
    if scaling.precision == "auto":
        return device.type == "cuda"
    return scaling.precision == "bf16"


def autocast(enabled: bool, device: torch.device):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _fsdp(model: nn.Module) -> nn.Module:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for blk in model.repeated_blocks():
        fully_shard(blk, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


def parallelize(model: nn.Module, strategy: str, world_size: int, compile_model: bool) -> nn.Module:
    """Returns the module to call for the forward: DDP wrapper, FSDP2-sharded model, or the model itself."""
    if compile_model:
        for blk in model.repeated_blocks():  # per block, head too: small graphs, the mask stays an input
            blk.compile()
    if world_size <= 1 and strategy == "ddp":
        return model
    if strategy == "fsdp":
        return _fsdp(model)
    import ray.train.torch

    return ray.train.torch.prepare_model(model, move_to_device=False)


def unwrap(module: nn.Module) -> nn.Module:
    return getattr(module, "module", module)
