"""`aimctl data ...`: demo data, format conversion, and selection/mixing builds with a JSON manifest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipelines.cli_common import console, fail

app = typer.Typer(
    help="Data: DFN-style pool + curated set -> selection, mixing, decode/augment on Ray Data.", no_args_is_help=True
)

EndpointOpt = Annotated[
    str | None, typer.Option("--endpoint-url", help="S3-compatible endpoint (default AWS_ENDPOINT_URL)")
]
RegionOpt = Annotated[str | None, typer.Option("--region", help="S3 region (default AWS_REGION or us-east-1)")]


def _s3(endpoint_url: str | None, region: str | None):
    from pydantic import ValidationError

    from pipelines.data.config import S3Config

    try:
        return S3Config(endpoint_url=endpoint_url, region=region)
    except ValidationError as e:
        fail(f"--endpoint-url: {e.errors()[0]['msg'].removeprefix('Value error, ')}")


def _data_error(e: BaseException) -> str | None:
    """The user-facing message of a data/storage error, also when Ray wrapped it in a task error (the last
    line of the text is no longer the message: Ray Data appends retry notes): see cli_common.user_error."""
    from pipelines.cli_common import user_error

    return user_error(e)


@app.command()
def demo(
    out: Annotated[str, typer.Option("--out", help="directory or s3://bucket/prefix")],
    shards: int = typer.Option(4, min=1),
    per_shard: int = typer.Option(200, min=20),
    curated_train: int = typer.Option(400, min=10),
    curated_test: int = typer.Option(100, min=10),
    size: int = typer.Option(64, min=16, help="pool image size (px, varied aspect); curated is half"),
    curated_size: int | None = typer.Option(
        None, min=16, help="curated image size (px, square; default half of --size)"
    ),
    seed: int = 0,
    endpoint_url: EndpointOpt = None,
    region: RegionOpt = None,
) -> None:
    """Write a small pool (WebDataset + metadata Parquet) and curated set (labelled Parquet), generated offline.

    The pool has low-score junk, a few corrupt images, a missing image and duplicate uids; OUT/data.yaml
    is a ready `data:` section and OUT/demo.json lists the broken samples."""
    from pipelines.data.demo import write_demo

    try:
        s = write_demo(
            out,
            shards=shards,
            per_shard=per_shard,
            curated_train=curated_train,
            curated_test=curated_test,
            size=size,
            seed=seed,
            curated_size=curated_size,
            s3=_s3(endpoint_url, region),
        )
    except OSError as e:
        fail(_data_error(e) or str(e), code=1)
    console.print(
        f"pool: {s.pool_uri} ({s.pool_rows} rows in {shards} shards)\n"
        f"curated: {s.curated_uri} ({s.curated_rows})\ndata section: {out.rstrip('/')}/data.yaml"
    )


@app.command()
def convert(
    src: Annotated[str, typer.Argument(help="labelled Parquet directory (image bytes + label)")],
    out: Annotated[str, typer.Option("--out", help="directory or s3://bucket/prefix")],
    as_: Annotated[str, typer.Option("--as", help="pool | curated")],
    format: Annotated[str, typer.Option("--format", help="curated only: parquet | wds")] = "parquet",
    shard_size: int = typer.Option(1000, min=1),
    limit: int | None = typer.Option(None, min=1),
    endpoint_url: EndpointOpt = None,
    region: RegionOpt = None,
) -> None:
    """Convert labelled Parquet (e.g. CIFAR-10) into the pool or the curated format.

    For a pool, uid, key and caption are derived from the source row, and `dfn_score` / `clip_b32_score`
    are uniform placeholders from the uid's hash (deterministic, unrelated to image quality)."""
    from pipelines.data.convert import convert as run

    if as_ not in ("pool", "curated"):
        fail(f"--as: expected pool or curated, got {as_!r}")
    if format not in ("parquet", "wds"):
        fail(f"--format: expected parquet or wds, got {format!r}")
    try:
        r = run(src, out, as_, format, shard_size, limit, s3=_s3(endpoint_url, region))
    except (OSError, ValueError) as e:
        fail(_data_error(e) or str(e), code=1)
    console.print(f"wrote {r.rows} rows in {r.files} files to {out}")


@app.command()
def build(
    experiment: Annotated[Path, typer.Argument(help="experiment YAML (reads data: and seed:)")],
    manifest: Annotated[str | None, typer.Option("--manifest", help="write the JSON here (path or s3://)")] = None,
    epoch: int = typer.Option(0, min=0),
    img_size: int = typer.Option(32, min=8, help="decode check size"),
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override, e.g. data.mix.pool_probability=0.7")
    ] = None,
) -> None:
    """Run selection and mixing for one epoch (decoding every sample) and print the JSON manifest."""
    from pipelines.data.config import DataConfigError, load_data_section

    try:
        cfg, seed = load_data_section(experiment, set_)
    except DataConfigError as e:
        fail(str(e))
    from pipelines.data.manifest import build_manifest, write_manifest

    try:
        m = build_manifest(cfg, seed, epoch, img_size)
        if manifest:
            write_manifest(m, manifest, cfg)
    except Exception as e:  # noqa: BLE001 - data errors become one line; others propagate
        msg = _data_error(e)
        if msg is None:
            raise
        fail(msg, code=1)
    typer.echo(json.dumps(m, indent=2))
