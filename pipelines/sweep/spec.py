"""Sweep files: a base experiment plus axes of named override sets, planned into trials.

```yaml
name: demo
base: ../cifar10-tiny.yaml        # relative to this file (or `experiment:` with an inline mapping)
mode: grid                        # grid (full product) | one_at_a_time (each axis alone, from the base)
set: {schedule.steps: 60}         # overrides applied to every trial
axes:
  target:
    norm_pixel: {target.name: norm_pixel}
    pixel: {target.name: pixel}
resources: {max_concurrent_trials: null, cpus_per_trial: 0.25}
seeds: [0, 1, 2]                  # optional: every trial once per seed (default: the base's seed only)
```

With `seeds`, the trials of the base experiment's own seed keep the ids (and run names) a sweep without
`seeds` gives them; the other seeds' ids end in `-s<seed>` ("target=pixel-s1").
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipelines.config import ExperimentConfig, parse_experiment
from pipelines.config_io import ConfigError, apply_overrides, read_mapping, validate
from pipelines.sweep.mlflow_view import IN_AXES_TAG, in_axes_tag
from pipelines.sweep.search import SearchSpec, sample_values

__all__ = ["SweepSpec", "Trial", "base_seed", "load_sweep", "plan_trials"]

Overrides = dict[str, Any]


class SweepResources(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_concurrent_trials: int | None = Field(None, gt=0, description="default: what the cluster's CPUs allow")
    cpus_per_trial: float = Field(0.25, gt=0, description="CPU reserved for each trial's driver")


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., min_length=1)
    base: str | None = None
    experiment: dict | None = None
    mode: Literal["grid", "one_at_a_time", "search"] = "one_at_a_time"
    set: Overrides = Field(default_factory=dict)
    axes: dict[str, dict[str, Overrides]] = Field(default_factory=dict)
    search: SearchSpec | None = Field(None, description="mode: search only: continuous ranges, samples, ASHA")
    resources: SweepResources = Field(default_factory=SweepResources)
    seeds: list[int] | None = Field(None, description="run every trial once per seed (the experiment's `seed`)")

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or len(set(v)) != len(v)):
            raise ValueError("give a non-empty list of distinct integers")
        return v

    @field_validator("name")
    @classmethod
    def _safe(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9._-]+", v):
            raise ValueError("use letters, digits, '.', '_' or '-' only")
        return v

    @field_validator("axes")
    @classmethod
    def _axes(cls, v: dict[str, dict[str, Overrides]]) -> dict[str, dict[str, Overrides]]:
        for axis, values in v.items():
            if not values:
                raise ValueError(f"axis {axis!r} has no values")
            for value, ov in values.items():
                if not isinstance(ov, dict) or not ov:
                    raise ValueError(f"axis {axis!r} value {value!r} must map config keys to values")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> SweepSpec:
        if (self.base is None) == (self.experiment is None):
            raise ValueError("give exactly one of `base` (a YAML path) or `experiment` (an inline mapping)")
        if self.mode == "search":
            if self.search is None:
                raise ValueError("mode: search needs a `search:` section (params, num_samples)")
            if self.axes:
                raise ValueError("mode: search samples `search.params`; give no `axes`")
        elif self.search is not None:
            raise ValueError(f"`search:` is for mode: search (this sweep's mode is {self.mode})")
        elif not self.axes:
            raise ValueError("axes: at least one axis is needed")
        return self


@dataclass
class Trial:
    trial_id: str  # stable, filesystem-safe: "base", "target=pixel", "target=pixel,attention=causal"
    axis: str  # the axis varied ("base" for the base trial, "grid" in grid mode)
    value: str
    assignments: dict[str, str]  # axis -> value name for every axis this trial sets
    config: ExperimentConfig
    overrides: list[str] = field(default_factory=list)
    duplicate_of: str | None = None  # one-at-a-time value identical to the base: reuses the base's results
    seed: int = 0  # the experiment's top-level `seed` this trial runs with

    def fingerprint(self) -> str:
        """What the trial computes: the config without its name/tags, with the *resolved* model (so
        `head: mlp` on a preset whose head is already mlp is the same trial)."""
        in_model = dict.fromkeys(("name", "num_clusters", "dvae_vocab"), True)  # resolved into the model below
        data = self.config.model_dump(mode="json", exclude={"name": True, "tags": True, "target": in_model})
        data["model"] = dataclasses.asdict(self.config.aim_config())
        return hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _flat_sets(ov: Overrides) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in ov.items()]


def _base_data(spec: SweepSpec, source: Path) -> dict:
    if spec.experiment is not None:
        return json.loads(json.dumps(spec.experiment))
    path = (source.parent / spec.base).resolve()
    if not path.is_file():
        raise ConfigError(f"{source}: base: no such experiment file {spec.base!r}")
    return read_mapping(path)


def _seed_suffix(seed: int | None, base_seed: int) -> str:
    """'' for the base experiment's own seed (today's ids), else '-s<seed>'."""
    return "" if seed is None or seed == base_seed else f"-s{seed}"


def _trial(
    spec: SweepSpec,
    source: Path,
    base: dict,
    assignments: dict[str, str],
    axis: str,
    value: str,
    seed: int | None = None,
    base_seed: int = 0,
    sampled: Overrides | None = None,
    name: str | None = None,
) -> Trial:
    """One planned trial; `seed` None (a sweep without `seeds`) leaves the experiment's seed alone."""
    sets = _flat_sets(spec.set)
    for ax, val in assignments.items():
        sets += _flat_sets(spec.axes[ax][val])
    sets += _flat_sets(sampled or {})
    if seed is not None:
        sets.append(f"seed={seed}")
    tid = (name or ",".join(f"{a}={v}" for a, v in assignments.items()) or "base") + _seed_suffix(seed, base_seed)
    data = apply_overrides(json.loads(json.dumps(base)), sets)
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", tid)
    digest = hashlib.sha1(tid.encode()).hexdigest()[:6]
    data["name"] = f"{spec.name}-{safe}-{digest}"[:120]
    data.setdefault("tags", {}).update({"sweep": spec.name, "axis": axis, "value": value, "trial": tid})
    data["tags"][IN_AXES_TAG] = in_axes_tag(axis, list(spec.axes))  # MLflow's per-axis chart views
    if seed is not None:
        data["tags"]["seed"] = str(seed)
    cfg = parse_experiment(data, f"{source} (trial {tid})")
    return Trial(tid, axis, value, assignments, cfg, sets, seed=cfg.seed)


def base_seed(spec: SweepSpec, base: dict) -> int:
    """The seed the base experiment runs with (after the sweep's `set`)."""
    data = apply_overrides(json.loads(json.dumps(base)), _flat_sets(spec.set))
    return int(data.get("seed", ExperimentConfig.model_fields["seed"].default))


def _plan_one_seed(spec: SweepSpec, source: Path, base: dict, seed: int | None, bseed: int) -> list[Trial]:
    """Grid: the product of all axes. One-at-a-time: the base, then each axis value alone. Search: the
    samples, drawn once at planning (seeded), so a rerun or `--resume` plans the same trials."""
    if spec.mode == "search":
        return [
            _trial(spec, source, base, {}, "search", value, seed, bseed, overrides, f"sample={i:02d}")
            for i, (value, overrides) in enumerate(sample_values(spec.search))
        ]
    if spec.mode == "grid":
        names = list(spec.axes)
        return [
            _trial(spec, source, base, dict(zip(names, combo)), "grid", ",".join(combo), seed, bseed)
            for combo in itertools.product(*(list(spec.axes[a]) for a in names))
        ]
    trials = [_trial(spec, source, base, {}, "base", "base", seed, bseed)]
    for axis, values in spec.axes.items():
        for value in values:
            trials.append(_trial(spec, source, base, {axis: value}, axis, value, seed, bseed))
    return trials


def plan_trials(spec: SweepSpec, source: Path) -> list[Trial]:
    """Every trial of the sweep, once per seed (seed-major order); duplicates are marked per seed (the
    seed is part of what a trial computes, so a trial only ever duplicates one of its own seed)."""
    base = _base_data(spec, source)
    bseed = base_seed(spec, base)
    trials: list[Trial] = []
    for seed in spec.seeds or [None]:
        trials += _plan_one_seed(spec, source, base, seed, bseed)
    return _mark_duplicates(trials)


def _mark_duplicates(trials: list[Trial]) -> list[Trial]:
    """A trial that computes exactly what an earlier one does runs once; the report reuses that run."""
    seen: dict[str, str] = {}
    for t in trials:
        fp = t.fingerprint()
        t.duplicate_of = seen.get(fp)
        seen.setdefault(fp, t.trial_id)
    return trials


def load_sweep(path: str | Path) -> tuple[SweepSpec, list[Trial]]:
    """Parse and validate a sweep file and every trial's experiment; ConfigError (one line) on problems."""
    spec = validate(SweepSpec, read_mapping(path, "sweep"), str(path))
    return spec, plan_trials(spec, Path(path))
