"""Loop hooks that inject faults for tests/reliability (subclasses of `pipelines.train.loop.LoopHooks`, handed
to `pretrain(hooks=...)`).

Ray ships the hooks to its controller and workers, whose sys.path does not hold tests/reliability: this module
is registered with Ray's cloudpickle to travel by value, so the processes only need `pipelines` (which they
import anyway)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import ray.cloudpickle

from pipelines.train.loop import LoopHooks

__all__ = ["PidFileHooks", "NanAtStep"]


@dataclass
class PidFileHooks(LoopHooks):
    """Rank 0 appends "PID STEP" to `path` each time its loop (re)starts (STEP: the step it resumes from)."""

    path: str

    def on_start(self, rank: int, step: int) -> None:
        if rank == 0:
            with open(self.path, "a") as f:
                f.write(f"{os.getpid()} {step}\n")


@dataclass
class NanAtStep(LoopHooks):
    """The loss of step `step` (1-based) is multiplied by NaN before backward: NaN gradients and weights after
    the update, as a diverging run produces."""

    step: int

    def transform_loss(self, step: int, loss):
        return loss * float("nan") if step == self.step else loss


ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
