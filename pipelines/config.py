"""The experiment config: one YAML file per experiment, parsed into typed sections.

Every section rejects unknown keys; impossible combinations fail at load time with one line that names
the field (`ConfigError`). Command-line overrides use dotted keys: `--set optim.lr=5e-4`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from aim_core import ATTN_IMPLS, HEADS, ORDERS, PRESETS, PRETRAIN_ATTENTION, TARGETS, AIMConfig, resolve_config
from pipelines.config_io import ConfigError, apply_overrides, read_mapping, validate
from pipelines.data.config import DataConfig, S3Config, storage_uri

__all__ = ["ConfigError", "ExperimentConfig", "load_experiment", "apply_overrides", "flatten", "Strict"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(Strict):
    """Which AIM: a preset from `aim_core.PRESETS` plus optional field overrides."""

    preset: str = "aim-tiny"
    img_size: int | None = Field(None, gt=0)
    patch_size: int | None = Field(None, gt=0)
    width: int | None = Field(None, gt=0)
    depth: int | None = Field(None, gt=0)
    num_heads: int | None = Field(None, gt=0)
    mlp_ratio: float | None = Field(None, gt=0)
    norm_eps: float | None = Field(
        None,
        gt=0,
        description="LayerNorm eps (default 1e-6 as in ml-aim; 1e-5 for checkpoints trained before the change)",
    )
    # The allowed names come from aim_core's registries (Literal[tuple] == Literal[*tuple]).
    head: Literal[HEADS] | None = None
    head_width: int | None = Field(None, gt=0)
    head_depth: int | None = Field(None, ge=0)
    head_num_heads: int | None = Field(None, gt=0)
    attention: Literal[PRETRAIN_ATTENTION] | None = None
    order: Literal[ORDERS] | None = None
    order_seed: int | None = None
    attn_impl: Literal[ATTN_IMPLS] | None = None

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, v: str) -> str:
        if v not in PRESETS:
            raise ValueError(f"unknown preset {v!r}; choose one of {', '.join(PRESETS)}")
        return v

    def overrides(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump(exclude={"preset"}).items() if v is not None}


class TargetSection(Strict):
    """Prediction target. kmeans/dvae fit their codebook/tokenizer on `fit_images` training images.

    `name`, `num_clusters` and `dvae_vocab` left unset take the preset's values (`aim_core.PRESETS`);
    set, they override it, exactly as the model section's fields do."""

    name: Literal[TARGETS] | None = Field(None, description="default: the preset's target")
    num_clusters: int | None = Field(None, ge=2, description="kmeans codebook size; default: the preset's")
    dvae_vocab: int | None = Field(None, ge=2, description="dVAE vocabulary; default: the preset's")
    fit_images: int = Field(2048, ge=16)
    fit_steps: int = Field(300, ge=1, description="k-means iterations or dVAE training steps")

    def overrides(self) -> dict[str, Any]:
        """The AIMConfig fields this section sets (only those given)."""
        fields = {"target": self.name, "num_clusters": self.num_clusters, "dvae_vocab": self.dvae_vocab}
        return {k: v for k, v in fields.items() if v is not None}


class OptimSection(Strict):
    lr: float = Field(1e-3 / 16, gt=0, description="learning rate per 256 images (scaled by global batch / 256)")
    batch_size: int = Field(64, gt=0, description="global batch size (all workers)")
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    clip_grad: float | None = Field(1.0, gt=0)

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in v):
            raise ValueError("betas must be in [0, 1)")
        return v


class ScheduleSection(Strict):
    steps: int = Field(200, gt=0)
    warmup_fraction: float = Field(0.025, ge=0, lt=1)
    warmup_lr_init: float = Field(1e-6, ge=0)
    min_lr: float = Field(0.0, ge=0)


class ScalingSection(Strict):
    num_workers: int = Field(
        1,
        ge=0,
        description="Ray Train workers (processes), each with its share of the batch; "
        "0 trains in the calling process (Ray Train local mode: no worker group to start, "
        "no worker retries; for small runs and sweeps of them)",
    )
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(1.0, ge=0)
    worker_resources: dict[str, float] = Field(
        default_factory=dict,
        description="custom Ray resources each training worker also needs, e.g. {spot_gpu: 1} to keep workers on "
        "the node types that advertise it (CPU and GPU come from cpus_per_worker / gpus_per_worker)",
    )

    @field_validator("worker_resources")
    @classmethod
    def _custom_only(cls, v: dict[str, float]) -> dict[str, float]:
        if clash := sorted({"CPU", "GPU", "memory"} & set(v)):
            raise ValueError(f"{', '.join(clash)} come from cpus_per_worker / gpus_per_worker, not worker_resources")
        if bad := sorted(k for k, x in v.items() if x <= 0):
            raise ValueError(f"amounts must be > 0 (got {', '.join(f'{k}: {v[k]}' for k in bad)})")
        return v

    strategy: Literal["ddp", "fsdp", "auto"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    compile: bool = False
    max_failures: int = Field(2, ge=0)
    threads_per_worker: int | None = Field(None, gt=0)
    shuffle_buffer: int = Field(
        256,
        ge=0,
        description=(
            "rows per worker shuffled together: each window of this many rows of a worker's stream is permuted by "
            "a seed of its position, so a resume decodes at most this many rows again (0: no shuffle)"
        ),
    )


class StorageSection(Strict):
    path: str = Field("runs", description="local directory or s3://bucket/prefix for checkpoints")
    _path = field_validator("path")(storage_uri)
    s3: S3Config = Field(
        default_factory=S3Config,
        description="S3 endpoint of `path` (checkpoints, run outputs); not given: the data section's data.s3",
    )
    checkpoint_every: int = Field(100, gt=0)
    keep: int = Field(2, gt=0)
    sharded: Literal["auto"] | bool = Field(
        "auto",
        description="FSDP checkpoints as per-rank shards "
        "(torch.distributed.checkpoint) instead of one full state gathered "
        "on rank 0: auto = when the model has >= sharded_min_params "
        "parameters; DDP always writes full checkpoints",
    )
    sharded_min_params: int = Field(
        300_000_000,
        ge=0,
        description="the model size from which `sharded: auto` shards (default parallel.FSDP_MIN_PARAMS)",
    )


class TrackingSection(Strict):
    uri: str | None = Field(
        None, description="MLflow tracking URI; default MLFLOW_TRACKING_URI or sqlite:///<cwd>/mlflow.db"
    )
    experiment: str = "aim"
    log_every: int = Field(10, gt=0)
    enabled: bool = True

    @field_validator("uri")
    @classmethod
    def _scheme(cls, v: str | None) -> str | None:
        schemes = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")
        if v is not None and v.partition(":")[0].split("+")[0] not in schemes:
            raise ValueError(
                f"{v!r}: MLflow needs one of {', '.join(s + ':' for s in schemes)} (e.g. sqlite:///mlflow.db)"
            )
        return v


class ProbeSection(Strict):
    enabled: bool = Field(True, description="probe each trial after pre-training in a sweep (aimctl probe always runs)")
    data: str | None = Field(None, description="labelled Parquet (train/test splits); default data.curated.uri")
    train_split: str = Field("train", min_length=1, description="files *_SPLIT-*, else rows whose `split` matches")
    test_split: str = Field(
        "test", min_length=1, description="held-out split: `test`, `val` (ImageNet) or `validation` (Hugging Face)"
    )
    blocks: list[int] | None = Field(None, description="trunk blocks averaged for features; default last 6")
    epochs: int = Field(20, gt=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    batch_size: int = Field(256, gt=0)
    train_limit: int | None = Field(None, gt=0)
    test_limit: int | None = Field(None, gt=0)
    cache_features: bool = True
    linear_bias: bool = Field(False, description="bias on the attentive probe's output Linear (ml-aim: none)")


class ExperimentConfig(Strict):
    name: str = Field(..., min_length=1)
    seed: int = 0
    tags: dict[str, str] = Field(default_factory=dict)
    model: ModelSection = Field(default_factory=ModelSection)
    target: TargetSection = Field(default_factory=TargetSection)
    data: DataConfig
    optim: OptimSection = Field(default_factory=OptimSection)
    schedule: ScheduleSection = Field(default_factory=ScheduleSection)
    scaling: ScalingSection = Field(default_factory=ScalingSection)
    storage: StorageSection = Field(default_factory=StorageSection)
    tracking: TrackingSection = Field(default_factory=TrackingSection)
    probe: ProbeSection = Field(default_factory=ProbeSection)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9._-]+", v):
            raise ValueError("use letters, digits, '.', '_' or '-' only")
        return v

    @model_validator(mode="before")
    @classmethod
    def _one_endpoint_by_default(cls, data: Any) -> Any:
        """Without `storage.s3`, checkpoints use the data's endpoint (one MinIO / S3 for both), copied here at
        load time: what reads or writes checkpoints reads `storage.s3` only."""
        if not isinstance(data, dict) or not isinstance(data.get("data"), dict):
            return data
        storage, s3 = data.get("storage"), data["data"].get("s3")
        if isinstance(s3, dict) and (storage is None or (isinstance(storage, dict) and "s3" not in storage)):
            data = {**data, "storage": {**(storage or {}), "s3": s3}}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentConfig:
        try:
            self.aim_config()
        except ValueError as e:  # resolve_config names the field first: "num_heads: ..."
            field, _, msg = str(e).partition(": ")
            raise ValueError(f"model.{field}: {msg}") from None
        depth = self.aim_config().depth
        bad = [b for b in self.probe.blocks or [] if not -depth <= b < depth]
        if bad:
            raise ValueError(f"probe.blocks: {bad} out of range for the model's depth {depth} (0..{depth - 1})")
        workers = self.scaling.num_workers
        if workers == 0 and self.scaling.strategy == "fsdp":
            raise ValueError(
                "scaling.strategy: fsdp shards over a worker group; use num_workers >= 1 (0 trains in one process)"
            )
        if self.optim.batch_size % max(workers, 1):
            raise ValueError(
                f"optim.batch_size: {self.optim.batch_size} is not divisible by scaling.num_workers={workers}"
            )
        return self

    def aim_config(self) -> AIMConfig:
        """The model this experiment trains: the preset, then the fields the model and target sections set.
        `aimctl model info` resolves through the same `model_overrides` + `resolve_config`."""
        return resolve_config(self.model.preset, **self.model_overrides())

    def model_overrides(self) -> dict[str, Any]:
        """AIMConfig fields set by the YAML (model and target sections); everything else is the preset's."""
        return {**self.model.overrides(), **self.target.overrides()}

    @property
    def run_name(self) -> str:
        return self.name


def _absolute(uri: str | None) -> str | None:
    """Local relative paths are taken from the working directory at load time and made absolute, so Ray
    workers and Tune trials (which run elsewhere) see the same files. URIs with a scheme are kept."""
    if uri is None or "://" in uri:
        return uri
    return str(Path(uri).expanduser().resolve())


def absolutize(cfg: ExperimentConfig) -> ExperimentConfig:
    cfg.storage.path = _absolute(cfg.storage.path)
    cfg.data.pool.uri = _absolute(cfg.data.pool.uri)
    cfg.data.curated.uri = _absolute(cfg.data.curated.uri)
    cfg.probe.data = _absolute(cfg.probe.data)
    if (
        cfg.tracking.uri
        and cfg.tracking.uri.startswith("sqlite:///")
        and not cfg.tracking.uri.startswith("sqlite:////")
    ):
        cfg.tracking.uri = "sqlite:///" + str(Path(cfg.tracking.uri.removeprefix("sqlite:///")).resolve())
    return cfg


def parse_experiment(data: dict, source: str = "<config>") -> ExperimentConfig:
    return absolutize(validate(ExperimentConfig, data, source))


def load_experiment(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read, override and validate an experiment YAML; raises ConfigError (one line) on any problem."""
    return parse_experiment(apply_overrides(read_mapping(path), overrides or []), str(path))


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a.b": value} (lists/tuples stringified), for MLflow params."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
