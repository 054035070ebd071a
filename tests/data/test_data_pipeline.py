"""The Ray Data pipeline end to end (one shared local Ray): S3 and local sources, selection counts,
top-fraction threshold, mix fraction, determinism, corrupt-file skipping, missing shards."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
import yaml
from data_helpers import CIFAR, demo_config, expected_selection
from typer.testing import CliRunner

from pipelines import storage
from pipelines.data import build_train_dataset, iter_torch_batches
from pipelines.data.manifest import data_version
from pipelines.data.pipeline import build_epoch

pytestmark = pytest.mark.ray


def test_build_on_s3_writes_manifest(ray_session, demo_s3, demo_local, s3_env, tmp_path):
    from pipelines.cli import app

    uri, summary = demo_s3
    exp = {
        "name": "demo",
        "seed": 4,
        "model": {"ignored": True},
        "data": {
            "pool": {"uri": f"{uri}/pool", "dedup": True},
            "curated": {"uri": f"{uri}/curated"},
            "max_bad_fraction": 0.05,
            "s3": {"endpoint_url": s3_env.endpoint},
        },
    }
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(exp))
    result = CliRunner().invoke(
        app, ["data", "build", str(tmp_path / "exp.yaml"), "--manifest", "s3://aim-data/manifests/demo.json"]
    )
    assert result.exit_code == 0, result.output
    fs, _ = storage.filesystem("s3://aim-data", demo_config(uri, s3_env.cfg).s3)
    m = json.loads(storage.read_bytes(fs, "aim-data/manifests/demo.json"))
    assert m == json.loads(result.stdout)
    threshold, kept = expected_selection(f"{demo_local[0]}/pool", 0.15, dedup=True)
    pool = m["pool"]
    assert pool["rows_seen"] == summary.pool_rows == 600 and pool["duplicates_dropped"] == 2
    assert pool["score_threshold"] == threshold and pool["rows_kept"] == kept
    assert m["skipped"]["corrupt_image"] == 2 and m["skipped"]["missing_image"] == 1
    assert set(m["skipped_by_shard"]) == {"pool:00000", "pool:00001", "pool:00003"}
    mix = m["mix"]
    assert mix["pool_samples"] == kept - 3 and mix["curated_samples"] == m["curated"]["samples_planned"]
    assert abs(mix["realised_pool_fraction"] - 0.8) < 0.03 and m["seed"] == 4
    cfg = demo_config(uri, s3_env.cfg, pool__dedup=True)
    assert m["data_version"] == data_version(cfg) and m["data_version"].startswith("sha256:")


def test_train_dataset_deterministic_per_seed_and_epoch(ray_session, preserve_order, demo_local):
    cfg = demo_config(demo_local[0])
    first = build_train_dataset(cfg, 24, seed=1).take_batch(40, batch_format="numpy")["image"]
    assert first.shape == (40, 3, 24, 24) and first.dtype == np.float32 and abs(first.mean()) < 2
    again = build_train_dataset(cfg, 24, seed=1).take_batch(40, batch_format="numpy")["image"]
    assert np.array_equal(first, again)
    for compute in ("tasks", "actors"):  # a separate decode pool gives the same samples and crops as fused
        other = cfg.model_copy(update={"decode": cfg.decode.model_copy(update={"compute": compute})})
        assert np.array_equal(first, build_train_dataset(other, 24, seed=1).take_batch(40)["image"]), compute
    other = build_train_dataset(cfg, 24, seed=1, epoch=1).take_batch(40)["image"]
    assert not np.array_equal(first, other)
    both = build_epoch(cfg, 24, seed=1, num_epochs=2)  # epochs 0 and 1 chained in one dataset
    images = np.concatenate([b["image"] for b in both.ds.iter_batches(batch_size=64, batch_format="numpy")])
    n0 = both.plans[0].n_slots - 3
    assert len(images) == both.n_slots - 6
    assert np.array_equal(images[:40], first) and np.array_equal(images[n0 : n0 + 40], other)
    # a run asks for the samples it will consume: enough epochs (+5% spare) are chained
    slots = both.plans[0].n_slots
    assert len(build_epoch(cfg, 24, seed=1, min_samples=slots).plans) == 2  # 1.05 x one epoch
    assert len(build_epoch(cfg, 24, seed=1, min_samples=int(slots * 0.9)).plans) == 1
    assert len(build_epoch(cfg, 24, seed=1, min_samples=3 * slots).plans) == 4
    built = build_epoch(cfg, 24, seed=1)
    batches = list(iter_torch_batches(built.ds.iterator(), batch_size=16))
    assert len(batches) == (built.plan.n_slots - 3) // 16  # 3 broken samples skipped, last partial dropped
    assert all(b.shape == (16, 3, 24, 24) and str(b.dtype) == "torch.float32" for b in batches)


@pytest.mark.parametrize("compute,batch_size", [("fused", 8), ("actors", 32)])
def test_decoded_blocks_reach_the_consumer_whole_and_contiguous(ray_session, demo_local, compute, batch_size):
    """Blocks reach the consumer as `block_rows` rows in one Arrow chunk (a block merged from pieces is a
    chunked array, which Ray's batcher copies whole), the last one per task shorter: fused whatever the
    decode batch size, actors when a decode batch is a block."""
    cfg = demo_config(
        demo_local[0],
        pool__top_fraction=0.5,
        decode__block_rows=32,
        decode__batch_size=batch_size,
        decode__compute=compute,
    )
    built = build_epoch(cfg, 24, seed=0)
    blocks = list(built.ds.iter_batches(batch_size=None, batch_format="pyarrow"))
    rows = [b.num_rows for b in blocks]
    assert all(b["image"].num_chunks == 1 for b in blocks), [b["image"].num_chunks for b in blocks]
    assert max(rows) == 32 and sum(rows) == built.n_slots - sum(built.tracker.summary()["by_reason"].values())
    tasks = len(built.plan.tasks)
    assert sum(r < 32 for r in rows) <= tasks + 3  # a short last block per task (+ blocks that lost a bad image)
    assert rows.count(32) >= built.n_slots // 32 - tasks - 3


def test_too_many_corrupt_images_stop_the_run(ray_session, demo_local):
    cfg = demo_config(demo_local[0], max_bad_fraction=0.0)
    with pytest.raises(Exception) as e:
        for _ in build_train_dataset(cfg, 16, seed=0).iter_batches(batch_size=64):
            pass
    text = str(e.value)
    assert "max_bad_fraction=0.0" in text
    assert any(f"pool shard '{s}'" in text for s in ("00000", "00001", "00003"))


def test_builds_in_one_process_keep_separate_ledgers_on_one_tracker(ray_session, demo_local):
    """Every build in a process reports to the same tracker actor (no actor start per dataset), each into
    its own ledger: a shard's limit counts only the epochs of that build."""
    cfg = demo_config(demo_local[0])
    first = build_epoch(cfg, 16, seed=0)
    bad = ("pool:00000", "pool:00001", "pool:00003")  # one broken image each (see test_build_on_s3_...)
    # 1.5 bad samples allowed per shard and build: one build passes, two builds' worth in one ledger would not
    limit = 1.5 / min(first.tracker.expected[s] for s in bad)
    cfg = demo_config(demo_local[0], max_bad_fraction=limit)
    a, b = build_epoch(cfg, 16, seed=0, epoch=0), build_epoch(cfg, 16, seed=0, epoch=1)
    assert a.tracker.actor._actor_id == b.tracker.actor._actor_id and a.tracker.build != b.tracker.build
    assert b.tracker.summary() == {"by_reason": {}, "by_shard": {}}
    for built in (a, b):
        n = sum(len(x["image"]) for x in built.ds.iter_batches(batch_size=64))
        assert n == built.plan.n_slots - 3
        summary = built.tracker.summary()
        assert summary["by_reason"] == {"corrupt_image": 2, "missing_image": 1}
        assert set(summary["by_shard"]) == set(bad)
    import ray  # a tracker that died is replaced by the next build, not reused

    ray.kill(a.tracker.actor)
    with pytest.raises(ray.exceptions.RayActorError):  # wait until Ray reports it dead
        for _ in range(300):
            ray.get(a.tracker.actor.ping.remote())
            time.sleep(0.1)
    c = build_epoch(cfg, 16, seed=0)
    assert c.tracker.actor._actor_id != a.tracker.actor._actor_id
    assert sum(len(x["image"]) for x in c.ds.iter_batches(batch_size=64)) == c.plan.n_slots - 3
    assert c.tracker.summary()["by_reason"] == {"corrupt_image": 2, "missing_image": 1}


def test_shard_missing_at_read_time_is_named(ray_session, demo_local, tmp_path):
    shutil.copytree(demo_local[0], tmp_path / "demo")
    cfg = demo_config(str(tmp_path / "demo"))
    ds = build_train_dataset(cfg, 16, seed=0)
    (tmp_path / "demo" / "pool" / "00002.tar").unlink()
    with pytest.raises(Exception) as e:
        ds.take_all()
    assert "pool shard '00002'" in str(e.value) and "not found" in str(e.value)


def test_top_fraction_and_mix_fraction_at_scale(ray_session, preserve_order, demo_local, tmp_path):
    """12,000 CIFAR images as a pool: the distributed threshold equals np.quantile, and over the first
    10,000 samples of the epoch the pool fraction is within 0.01 of p."""
    from pipelines.data.convert import convert
    from pipelines.data.select import select_pool

    convert(CIFAR, str(tmp_path / "pool"), "pool", shard_size=3000, limit=12_000)
    cfg = demo_config(demo_local[0], pool__uri=str(tmp_path / "pool"), pool__top_fraction=0.15)
    sel = select_pool(cfg)
    threshold, kept = expected_selection(str(tmp_path / "pool"), 0.15, dedup=False)
    assert sel.threshold == threshold and sel.rows_kept == kept
    everything = cfg.model_copy(update={"pool": cfg.pool.model_copy(update={"top_fraction": 1.0})})
    built = build_epoch(everything, 16, seed=2, keep_source=True)
    is_pool = np.concatenate([b["is_pool"] for b in built.ds.iter_batches(batch_size=1000, batch_format="numpy")])
    assert len(is_pool) == built.plan.n_slots and is_pool.sum() == 12_000
    assert abs(is_pool[:10_000].mean() - 0.8) <= 0.01
