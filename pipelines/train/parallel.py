"""Distribution, precision and compile, applied to the model from outside (torchtitan-style)."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from pipelines.config import ScalingSection

__all__ = ["choose_strategy", "parallelize", "autocast", "use_bf16", "unwrap"]

FSDP_MIN_PARAMS = 300_000_000  # "large presets": FSDP2 when the model would crowd one GPU with AdamW
# (also the default of `storage.sharded_min_params`: such models checkpoint as shards, `state_io.use_sharded`)


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


def _fsdp(model: nn.Module, bf16: bool) -> nn.Module:
    """FSDP2: each block, then the root. bf16 compute (fp32 master weights and reductions) when `bf16`, else fp32
    throughout, as `scaling.precision` says (DDP's bf16 is autocast; FSDP's is this policy)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None, reduce_dtype=torch.float32)
    for blk in model.repeated_blocks():
        fully_shard(blk, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


def parallelize(model: nn.Module, strategy: str, world_size: int, compile_model: bool, bf16: bool = True) -> nn.Module:
    """Returns the module to call for the forward: DDP wrapper, FSDP2-sharded model, or the model itself.

    `bf16` (`use_bf16`) sets FSDP's compute dtype; DDP and single-process runs take it from `autocast`."""
    if compile_model:
        for blk in model.repeated_blocks():  # per block, head too: small graphs, the mask stays an input
            blk.compile()
    if world_size <= 1 and strategy == "ddp":
        return model
    if strategy == "fsdp":
        return _fsdp(model, bf16)
    import ray.train.torch

    return ray.train.torch.prepare_model(model, move_to_device=False)


def unwrap(module: nn.Module) -> nn.Module:
    return getattr(module, "module", module)
