"""`DataConfig`: the `data:` section of an experiment (pool, curated set, mixing, augmentation, storage).

Every field has a default except the two locations, so the smallest valid section is::

    data:
      pool: {uri: s3://bucket/dfn-pool}
      curated: {uri: s3://bucket/imagenet}

Credentials are never part of the config: they come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
(and AWS_SESSION_TOKEN) in the environment.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator

from pipelines.config_io import ConfigError, apply_overrides, read_mapping, validate

__all__ = [
    "DataConfig",
    "DataConfigError",
    "load_data_section",
    "parse_data_section",
    "PoolConfig",
    "CuratedConfig",
    "MixConfig",
    "AugmentConfig",
    "DecodeConfig",
    "S3Config",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def storage_uri(v: str) -> str:
    """A local path or s3://bucket[/prefix]: any other scheme, or s3:// without a bucket, is refused here, at
    load time, instead of failing inside pyarrow once the run has started."""
    if "://" not in v:
        return v
    scheme, _, rest = v.partition("://")
    if scheme != "s3":
        raise ValueError(f"{v!r}: use a local directory or s3://bucket/prefix (scheme {scheme!r} is not supported)")
    if not rest.split("/", 1)[0]:
        raise ValueError(f"{v!r}: an s3:// URI needs a bucket (s3://bucket/prefix)")
    return v


class S3Config(_Strict):
    """S3-compatible endpoint. Unset fields fall back to AWS_ENDPOINT_URL / AWS_REGION in the environment."""

    endpoint_url: str | None = Field(None, description="e.g. http://127.0.0.1:9000; None = AWS itself")
    region: str | None = Field(None, description="default AWS_REGION or us-east-1")
    retry_seconds: float = Field(
        30.0,
        ge=0,
        le=3600,
        description="keep retrying a failing request (endpoint down, throttled) for at "
        "least this long before the run fails; 0 = no retries",
    )

    @field_validator("endpoint_url")
    @classmethod
    def _scheme(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v


class PoolConfig(_Strict):
    """The image-text pool: WebDataset shards NAME.tar with one metadata NAME.parquet each."""

    uri: str = Field(..., min_length=1, description="local directory or s3://bucket/prefix")
    _uri = field_validator("uri")(storage_uri)
    score_column: str = Field("dfn_score", min_length=1, description="metadata column ranked by the filter")
    threshold: float | None = Field(None, description="keep rows with score >= threshold (overrides top_fraction)")
    top_fraction: float = Field(0.15, gt=0, le=1, description="keep the top fraction by a global quantile")
    dedup: bool = Field(False, description="drop rows whose uid was already seen (keeps the smallest shard/key)")
    subset: str | None = Field(
        None,
        description="keep only rows whose uid is listed here: a DataComp .npy (sorted u8,u8 uids) or a "
        ".parquet with a uid column; alone (no score rule) unless threshold/top_fraction is also given",
    )
    scores: str | None = Field(
        None,
        description="Parquet file or directory with uid + score_column, joined on uid (instead of the "
        "score column of each shard's metadata)",
    )

    @field_validator("subset")
    @classmethod
    def _subset_file(cls, v: str | None) -> str | None:
        if v is None:
            return v
        storage_uri(v)
        if not v.endswith((".npy", ".parquet")):
            raise ValueError(f"{v!r}: a uid list is a .npy (DataComp) or a .parquet file with a uid column")
        return v

    @field_validator("scores")
    @classmethod
    def _scores_uri(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("must be a Parquet file or directory (local or s3://), not empty")
        return v if v is None else storage_uri(v)

    @model_validator(mode="after")
    def _one_rule(self) -> PoolConfig:
        if self.threshold is not None and "top_fraction" in self.model_fields_set:
            raise ValueError("top_fraction: give either threshold or top_fraction, not both")
        if self.scores is not None and self.rule == "subset":
            raise ValueError(
                "scores: a subset alone scores nothing; give threshold or top_fraction to rank the subset's rows"
            )
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        """Unset subset/scores are left out (a config without them dumps, and so fingerprints, as before they
        existed), and so is top_fraction under the subset-alone rule (a dump re-loads to the same rule)."""
        d = handler(self)
        if isinstance(d, dict):
            for k in ("subset", "scores"):
                if d.get(k) is None:
                    d.pop(k, None)
            if self.rule == "subset":
                d.pop("top_fraction", None)
        return d

    @property
    def rule(self) -> Literal["threshold", "top_fraction", "subset"]:
        """threshold / top_fraction (of the subset's rows when `subset` is set too) / subset alone."""
        if self.threshold is not None:
            return "threshold"
        if self.subset is not None and "top_fraction" not in self.model_fields_set:
            return "subset"
        return "top_fraction"


class CuratedConfig(_Strict):
    """The curated labelled set (ImageNet's role): Parquet (image bytes + label) or WebDataset shards."""

    uri: str = Field(..., min_length=1, description="local directory or s3://bucket/prefix")
    _uri = field_validator("uri")(storage_uri)
    format: Literal["parquet", "wds"] = "parquet"
    split: str | None = Field("train", description="files named *_SPLIT-*, else rows whose `split` column matches")
    image_column: str = Field("image", min_length=1, description="Parquet column, or WebDataset extension (jpg)")
    label_column: str = Field("label", min_length=1, description="Parquet column, or .cls / JSON field")


class MixConfig(_Strict):
    pool_probability: float = Field(0.8, gt=0, le=1, description="chance that a sample comes from the pool")
    window: int = Field(32, ge=1, le=4096, description="slots per stratification window (bounds the drift)")


class AugmentConfig(_Strict):
    crop_scale: tuple[float, float] = Field((0.4, 1.0), description="RandomResizedCrop area range")
    crop_ratio: tuple[float, float] = Field((3 / 4, 4 / 3), description="RandomResizedCrop aspect range")
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    hflip: float = Field(0.5, ge=0, le=1, description="horizontal flip probability")
    color_jitter: float = Field(0.0, ge=0, le=1, description="brightness/contrast/saturation strength; 0 = off")
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @field_validator("crop_scale")
    @classmethod
    def _scale(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = v
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"need 0 < lo <= hi <= 1, got ({lo}, {hi})")
        return v

    @field_validator("crop_ratio")
    @classmethod
    def _ratio(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError(f"need 0 < lo <= hi, got {v}")
        return v

    @field_validator("std")
    @classmethod
    def _std(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(v) <= 0:
            raise ValueError("every std must be > 0")
        return v


class DecodeConfig(_Strict):
    """Decode + augment stage in Ray Data."""

    compute: Literal["fused", "tasks", "actors"] = Field(
        "fused", description="fused: decode inside the shard read tasks; tasks/actors: a separate decode pool"
    )
    concurrency: int = Field(2, ge=1, description="decode tasks/actors (fused: read+decode tasks) at once")
    num_cpus: float = Field(1.0, gt=0, description="CPUs reserved per decode task/actor")
    batch_size: int = Field(
        64,
        ge=1,
        description="tasks/actors: rows per decode call; >= 3/4 of block_rows keeps "
        "blocks contiguous (fused decodes block_rows at a time)",
    )
    read_concurrency: int = Field(2, ge=1, description="shard read tasks at once (tasks/actors modes)")
    read_num_cpus: float = Field(
        0.0, ge=0, description="CPUs reserved per read task (mostly I/O; 0 so reads never wait behind decode actors)"
    )
    read_chunk: int = Field(256, ge=1, description="rows per block emitted by a shard reader")
    block_rows: int = Field(
        256,
        ge=1,
        description="target images per output block: smaller blocks reach the "
        "trainer sooner (first batch), larger ones cost less per image",
    )


class DataConfig(_Strict):
    pool: PoolConfig
    curated: CuratedConfig
    mix: MixConfig = Field(default_factory=MixConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    decode: DecodeConfig = Field(default_factory=DecodeConfig)
    s3: S3Config = Field(default_factory=S3Config)
    max_bad_fraction: float = Field(
        0.01, ge=0, lt=1, description="per shard: corrupt or missing images tolerated before failing"
    )


class DataConfigError(ConfigError):
    """A problem with the `data:` section, as one line naming the file and field."""


def parse_data_section(raw: object, source: str = "<config>") -> DataConfig:
    if not isinstance(raw, dict):
        raise DataConfigError(f"{source}: data: must be a mapping with at least pool.uri and curated.uri")
    return validate(DataConfig, raw, source, prefix="data", error=DataConfigError)


def load_data_section(path, overrides: list[str] | None = None) -> tuple[DataConfig, int]:
    """(DataConfig, seed) from an experiment YAML: only `data:` and the top-level `seed` (default 0) are read;
    other sections are ignored. `overrides` are dotted `KEY=VALUE` strings on the whole document, e.g.
    `data.pool.top_fraction=0.2` or `seed=3` (the same syntax as `--set` elsewhere)."""
    doc = read_mapping(path, error=DataConfigError)
    apply_overrides(doc, overrides or [], str(path), error=DataConfigError)
    if "data" not in doc:
        raise DataConfigError(f"{path}: data: missing section (needs at least pool.uri and curated.uri)")
    seed = doc.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise DataConfigError(f"{path}: seed: must be an integer")
    return parse_data_section(doc["data"], str(path)), seed
