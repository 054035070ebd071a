"""Hugging Face `datasets` Parquet: `image` a struct of `bytes` + `path` (an `Image()` feature), `label` an
integer class, files `train-00000-of-00001.parquet`; as probe data and as the curated set."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_helpers import CIFAR, demo_config

from pipelines.data import formats, load_labelled
from pipelines.data.config import CuratedConfig
from pipelines.data.errors import DataError

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
HF_META = {
    "info": {
        "features": {
            "image": {"_type": "Image"},
            "label": {"names": [str(i) for i in range(10)], "_type": "ClassLabel"},
        }
    }
}


def _hf_file(src: str, out, n: int) -> None:
    """`n` CIFAR rows rewritten the way `datasets.Dataset.to_parquet` stores an Image() + ClassLabel."""
    t = pq.read_table(src).slice(0, n)
    images = [{"bytes": b, "path": f"{i:05d}.png"} for i, b in enumerate(t["image"].to_pylist())]
    table = pa.table({"image": pa.array(images, IMAGE), "label": t["label"].cast(pa.int64())})
    table = table.replace_schema_metadata({"huggingface": json.dumps(HF_META)})
    pq.write_table(table, out)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf") / "data"
    root.mkdir()
    _hf_file(f"{CIFAR}/cifar10_train-00-of-02.parquet", root / "train-00000-of-00001.parquet", 120)
    _hf_file(f"{CIFAR}/cifar10_test-00-of-01.parquet", root / "test-00000-of-00001.parquet", 40)
    return root


def test_hf_image_struct_as_probe_data(hf_dir):
    x, y = load_labelled(str(hf_dir), "test", 16)
    ref_x, ref_y = load_labelled(CIFAR, "test", 16, limit=40)
    assert x.shape == (40, 3, 16, 16) and np.array_equal(y.numpy(), ref_y.numpy())
    assert np.allclose(x.numpy(), ref_x.numpy())
    x, y = load_labelled(CuratedConfig(uri=str(hf_dir)), "train", 16, limit=50)
    assert len(y) == 50 and int(y.max()) < 10


def test_image_struct_bytes_and_errors():
    col = pa.chunked_array([pa.array([{"bytes": b"x", "path": "a"}, {"bytes": None, "path": "b.jpg"}], IMAGE)])
    assert formats.image_bytes(col) == [b"x", None]  # a row stored by path only has no image here
    assert formats.image_bytes(pa.chunked_array([pa.array([b"y"])])) == [b"y"]
    no_bytes = pa.chunked_array([pa.array([{"path": "a"}], pa.struct([("path", pa.string())]))])
    with pytest.raises(DataError, match="'bytes'"):
        formats.image_bytes(no_bytes)


@pytest.mark.ray
def test_hf_parquet_as_curated_set(ray_session, demo_local, hf_dir):
    from pipelines.data.manifest import build_manifest

    cfg = demo_config(demo_local[0], curated__uri=str(hf_dir))
    m = build_manifest(cfg, seed=0)
    assert m["curated"]["files"] == ["train-00000-of-00001.parquet"] and m["curated"]["rows"] == 120
    assert m["mix"]["curated_samples"] == m["curated"]["samples_planned"] > 0
    assert not [k for k in m["skipped_by_shard"] if k.startswith("curated:")]
