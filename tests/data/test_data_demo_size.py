"""`aimctl data demo --size/--curated-size`: source image sizes of the demo pool and curated set (no Ray)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image
from typer.testing import CliRunner

from pipelines.cli import app


def _pool_sizes(pool: Path) -> list[tuple[int, int]]:
    sizes = []
    for tar in sorted(pool.glob("*.tar")):
        with tarfile.open(tar) as t:
            for m in t.getmembers():
                if m.name.endswith(".json"):
                    row = json.loads(t.extractfile(m).read())
                    sizes.append((row["width"], row["height"]))
    return sizes


def _curated_sizes(curated: Path) -> set[tuple[int, int]]:
    table = pq.read_table(next(curated.glob("demo_train-*.parquet")), columns=["image"])
    return {Image.open(io.BytesIO(b)).size for b in table["image"].to_pylist()}


def test_demo_size_options(tmp_path):
    out = tmp_path / "demo"
    res = CliRunner().invoke(
        app,
        [
            "data",
            "demo",
            "--out",
            str(out),
            "--shards",
            "1",
            "--per-shard",
            "20",
            "--curated-train",
            "10",
            "--curated-test",
            "10",
            "--size",
            "48",
            "--curated-size",
            "40",
        ],
    )
    assert res.exit_code == 0, res.output
    sizes = _pool_sizes(out / "pool")
    assert len(sizes) == 20 and all(36 <= s <= 72 for wh in sizes for s in wh)  # 0.75-1.5 x --size per side
    assert _curated_sizes(out / "curated") == {(40, 40)}


def test_demo_curated_size_defaults_to_half(tmp_path):
    from pipelines.data.demo import write_demo

    write_demo(str(tmp_path), shards=1, per_shard=20, curated_train=10, curated_test=10, size=64)
    assert _curated_sizes(tmp_path / "curated") == {(32, 32)}
