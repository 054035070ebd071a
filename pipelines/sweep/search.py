"""`mode: search`: continuous ranges sampled with Ray Tune's distributions, trials stopped early by ASHA.

```yaml
mode: search
search:
  num_samples: 6                 # trials (times `seeds`, if given)
  seed: 0                        # the sampling's seed: the same file always plans the same trials
  params:
    optim.lr: {distribution: log_uniform, low: 1.0e-4, high: 1.0e-2}
    optim.weight_decay: {distribution: uniform, low: 0.0, high: 0.1}
    schedule.warmup_fraction: {distribution: uniform, low: 0.0, high: 0.1}
  scheduler: {name: asha, grace_period: 20, reduction_factor: 2}   # or {name: fifo}
```

The samples are drawn once, when the sweep is planned (Tune's `loguniform` / `uniform` domains with a
seeded random state), so `--dry-run` lists them and `--resume` finishes exactly those trials, as with the
grid. ASHA reads the `train/loss` each trial reports to Tune as it trains (`step` is its time axis) and
stops the trials in the worse part of each rung.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["Range", "SchedulerSpec", "SearchSpec", "sample_values", "make_scheduler"]

METRIC = "train/loss"
TIME_ATTR = "step"


class Range(BaseModel):
    model_config = ConfigDict(extra="forbid")
    distribution: Literal["uniform", "log_uniform"]
    low: float
    high: float

    @model_validator(mode="after")
    def _bounds(self) -> Range:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low:g}) must be below high ({self.high:g})")
        if self.distribution == "log_uniform" and self.low <= 0:
            raise ValueError(f"log_uniform needs low > 0 (got {self.low:g})")
        return self

    def domain(self):
        from ray import tune

        return (
            tune.loguniform(self.low, self.high)
            if self.distribution == "log_uniform"
            else tune.uniform(self.low, self.high)
        )


class SchedulerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(10, gt=0, description="steps a trial always runs before ASHA may stop it")
    reduction_factor: float = Field(2.0, gt=1)


class SearchSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    num_samples: int = Field(..., gt=0, le=1000)
    seed: int = 0
    params: dict[str, Range] = Field(..., min_length=1)
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)


def _label(key: str, v: float) -> str:
    return f"{key.rsplit('.', 1)[-1]}={v:.3g}"


def sample_values(search: SearchSpec) -> list[tuple[str, dict[str, float]]]:
    """(value name, overrides) per sample: e.g. ('lr=0.00125,weight_decay=0.0549', {'optim.lr': ...})."""
    import numpy as np

    rng = np.random.RandomState(search.seed)
    out = []
    for _ in range(search.num_samples):
        ov = {k: float(r.domain().sample(random_state=rng)) for k, r in search.params.items()}
        out.append((",".join(_label(k, v) for k, v in ov.items()), ov))
    return out


def make_scheduler(search: SearchSpec | None, max_steps: int):
    """ASHA on the reported training loss (time axis: the training step); FIFO without a search."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if search is None or search.scheduler.name == "fifo":
        return FIFOScheduler()
    s = search.scheduler
    return ASHAScheduler(
        time_attr=TIME_ATTR,
        metric=METRIC,
        mode="min",
        max_t=max_steps,
        grace_period=min(s.grace_period, max_steps),
        reduction_factor=s.reduction_factor,
    )
