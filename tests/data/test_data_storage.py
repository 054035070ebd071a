"""Object storage against a real local S3 endpoint (moto, with authentication): listing, errors, reads."""

from __future__ import annotations

import numpy as np
import pyarrow.fs as pafs
import pytest
from data_helpers import demo_config

from pipelines import storage
from pipelines.data import formats
from pipelines.data.labelled import load_labelled
from pipelines.data.plan import curated_source


def test_resolve_local_and_s3(s3_env, tmp_path):
    fs, path = storage.resolve(str(tmp_path))
    assert fs is None and path == str(tmp_path.resolve())
    fs, path = storage.resolve("s3://aim-data/some/prefix/", s3_env.cfg)
    assert isinstance(fs, pafs.S3FileSystem) and path == "aim-data/some/prefix"


def test_demo_on_s3_lists_like_local(demo_s3, demo_local, s3_env):
    uri, summary = demo_s3
    fs, root = storage.filesystem(f"{uri}/pool", s3_env.cfg)
    shards = formats.list_pool_shards(fs, root)
    local = formats.list_pool_shards(pafs.LocalFileSystem(), f"{demo_local[0]}/pool")
    assert [s.name for s in shards] == [s.name for s in local] and [s.size for s in shards] == [s.size for s in local]
    assert summary.pool_rows == demo_local[1].pool_rows
    cur = curated_source(demo_config(uri, s3_env.cfg).curated, s3_env.cfg)
    assert cur.rows == 300 and len(cur.files) == 1  # the train split only


def test_bad_credentials_clear_error_without_secret(demo_s3, s3_env, monkeypatch):
    uri, _ = demo_s3
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-Zq81")
    fs, root = storage.filesystem(f"{uri}/pool", s3_env.cfg)
    with pytest.raises(storage.StorageError) as e:
        formats.list_pool_shards(fs, root)
    text = str(e.value)
    assert "access denied" in text and f"{uri}/pool" in text and "AWS_SECRET_ACCESS_KEY" in text
    assert "wrong-secret-Zq81" not in text and s3_env.secret not in text and "\n" not in text


def test_unknown_key_id_and_missing_bucket(demo_s3, s3_env, monkeypatch):
    fs, root = storage.filesystem("s3://no-such-bucket-x/pool", s3_env.cfg)
    with pytest.raises(storage.StorageError, match="not found"):
        storage.list_dir(fs, root)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIANOTAKEY")
    fs, root = storage.filesystem(f"{demo_s3[0]}/pool", s3_env.cfg)
    with pytest.raises(storage.StorageError, match="access denied"):
        storage.list_dir(fs, root)


def test_missing_object_is_not_found(s3_env):
    fs, _ = storage.filesystem("s3://aim-data", s3_env.cfg)
    with pytest.raises(storage.StorageError, match=r"s3://aim-data/nothing/here\.bin: not found"):
        storage.read_bytes(fs, "aim-data/nothing/here.bin")


def test_load_labelled_from_s3_equals_local(demo_s3, demo_local, s3_env):
    remote = load_labelled(demo_config(demo_s3[0], s3_env.cfg), "test", 16)
    local = load_labelled(f"{demo_local[0]}/curated", "test", 16)
    assert remote[0].shape == (60, 3, 16, 16)
    assert np.array_equal(remote[1].numpy(), local[1].numpy()) and (remote[0] == local[0]).all()


def test_in_process_checkpoints_persist_to_s3_newest_kept(s3_env, tmp_path):
    """`scaling.num_workers: 0` runs persist their own checkpoints (Ray Train local mode keeps none): on S3 the
    copy lands under the run, only the newest `keep` stay, and the driver finds the newest."""
    import torch

    from pipelines import storage
    from pipelines.train.checkpoint import TrainState, persist_checkpoint, read_state, save_state

    fs, root = storage.resolve("s3://aim-data/ckpt-test/runs", s3_env.cfg)
    run_dir = f"{root}/r"
    for step in (2, 4, 6):
        local = tmp_path / f"s{step}"
        save_state(local, {"w": torch.full((2,), float(step))}, {}, {}, TrainState(step=step))
        persist_checkpoint(local, fs, run_dir, step, keep=2)
    import pyarrow.fs as pafs

    names = sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(run_dir)))
    assert names == ["checkpoint_local_0000000004", "checkpoint_local_0000000006"]
    state = read_state(fs, f"{run_dir}/checkpoint_local_0000000006")
    assert state["step"] == 6 and state["model"]["w"].tolist() == [6.0, 6.0]
