"""On-storage formats and conversion (no Ray): WebDataset round trip, shard listing, convert, labelled."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from data_helpers import CIFAR

from pipelines.data import formats
from pipelines.data.config import CuratedConfig
from pipelines.data.convert import convert, derived_scores
from pipelines.data.errors import DataError
from pipelines.data.labelled import load_labelled


def test_wds_round_trip(tmp_path):
    fs = pafs.LocalFileSystem()
    samples = [(f"{i:04d}", {"jpg": bytes([i]) * 10, "txt": b"cap", "json": b"{}"}) for i in range(5)]
    (tmp_path / "s.tar").write_bytes(formats.wds_bytes(samples))
    back = list(formats.iter_wds(fs, str(tmp_path / "s.tar")))
    assert back == [(k, dict(sorted(f.items()))) for k, f in samples]
    only = list(formats.iter_wds(fs, str(tmp_path / "s.tar"), exts={"jpg"}))
    assert all(set(f) == {"jpg"} for _, f in only)


@pytest.mark.parametrize(
    "name, split, hit",
    [
        ("cifar10_train-00-of-02.parquet", "train", True),
        ("cifar10_test-00-of-01.parquet", "train", False),
        ("imagenet_val-00001.tar", "val", True),
        ("strain-0.parquet", "train", False),
    ],
)
def test_split_naming(name, split, hit):
    assert formats.split_matches(name, split) is hit


def test_pool_listing_names_a_missing_shard(demo_local, tmp_path):
    root, _ = demo_local
    broken = tmp_path / "pool"
    shutil.copytree(f"{root}/pool", broken)
    (broken / "00002.tar").unlink()
    with pytest.raises(DataError, match=r"pool shard '00002'.*00002\.tar is missing"):
        formats.list_pool_shards(pafs.LocalFileSystem(), str(broken))
    with pytest.raises(DataError, match="no pool shards"):
        formats.list_pool_shards(pafs.LocalFileSystem(), str(tmp_path))


def test_convert_cifar_to_pool_is_deterministic(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    r = convert(CIFAR, str(a), "pool", shard_size=25, limit=60)
    convert(CIFAR, str(b), "pool", shard_size=25, limit=60)
    assert (r.files, r.rows) == (3, 60)
    meta = pq.read_table(a / "00000.parquet")
    assert meta.column_names == ["uid", "key", "caption", "width", "height", "dfn_score", "clip_b32_score"]
    assert meta.equals(pq.read_table(b / "00000.parquet"))
    row = meta.slice(0, 1).to_pylist()[0]
    assert row["width"] == row["height"] == 32 and row["caption"].startswith("a photo of a ")
    assert row["dfn_score"] == pytest.approx(derived_scores(row["uid"])[0], rel=1e-6)
    keys = [k for k, _ in formats.iter_wds(pafs.LocalFileSystem(), str(a / "00000.tar"))]
    assert keys == meta["key"].to_pylist()


@pytest.mark.parametrize("fmt", ["parquet", "wds"])
def test_convert_curated_and_load_labelled(tmp_path, fmt):
    out = tmp_path / fmt
    convert(CIFAR, str(out), "curated", fmt=fmt, shard_size=40, limit=100)
    names = sorted(p.name for p in out.iterdir())
    assert names[0].startswith("cifar10_test-00000.")
    x, y = load_labelled(CuratedConfig(uri=str(out), format=fmt), "test", 24)
    ref_x, ref_y = load_labelled(CIFAR, "test", 24, limit=100)
    assert x.shape == (100, 3, 24, 24) and y.dtype.is_floating_point is False
    assert np.array_equal(y.numpy(), ref_y.numpy()) and np.allclose(x.numpy(), ref_x.numpy())


def test_load_labelled_split_by_column(tmp_path):
    src = pq.read_table(f"{CIFAR}/cifar10_test-00-of-01.parquet").slice(0, 30)
    split = pa.array(["train"] * 20 + ["test"] * 10)
    pq.write_table(src.set_column(src.column_names.index("split"), "split", split), tmp_path / "mixed.parquet")
    x, y = load_labelled(str(tmp_path), "test", 16)
    assert len(y) == 10 and np.array_equal(y.numpy(), src["label"].to_numpy()[20:])
    x, y = load_labelled(str(tmp_path), "train", 16, limit=7)
    assert x.shape == (7, 3, 16, 16)


def test_load_labelled_cifar_is_deterministic():
    a = load_labelled(CIFAR, "train", 32, limit=64)
    b = load_labelled(CIFAR, "train", 32, limit=64)
    assert a[0].shape == (64, 3, 32, 32) and a[1].dtype == __import__("torch").int64
    assert (a[0] == b[0]).all() and (a[1] == b[1]).all() and a[1].max() < 10
    assert abs(float(a[0].mean())) < 1.0


def test_cli_demo_and_convert(tmp_path):
    from typer.testing import CliRunner

    from pipelines.cli import app

    r = CliRunner().invoke(
        app,
        [
            "data",
            "demo",
            "--out",
            str(tmp_path / "d"),
            "--shards",
            "2",
            "--per-shard",
            "30",
            "--curated-train",
            "20",
            "--curated-test",
            "10",
            "--size",
            "24",
        ],
    )
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "d" / "pool").iterdir()) == [
        "00000.parquet",
        "00000.tar",
        "00001.parquet",
        "00001.tar",
    ]
    assert (tmp_path / "d" / "data.yaml").read_text().count("uri:") == 2
    r = CliRunner().invoke(
        app,
        ["data", "convert", CIFAR, "--out", str(tmp_path / "c"), "--as", "curated", "--format", "wds", "--limit", "30"],
    )
    assert r.exit_code == 0 and "30 rows" in r.output
    r = CliRunner().invoke(app, ["data", "convert", CIFAR, "--out", str(tmp_path / "x"), "--as", "nonsense"])
    assert r.exit_code == 2 and "--as" in r.output
