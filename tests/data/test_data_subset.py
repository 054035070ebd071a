"""DataComp-style selection: uid subset files (.npy as DataComp writes them, or Parquet with `uid`), alone or
with a threshold / top fraction, and scores joined on uid from a separate Parquet; locally and on S3."""

from __future__ import annotations

import glob
import io
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_helpers import demo_config

from pipelines import storage
from pipelines.data import uids
from pipelines.data.errors import DataError


def _datacomp_npy(hex_uids: list[str]) -> bytes:
    """A subset file exactly as DataComp's baselines save one (sorted structured u8,u8 array)."""
    arr = np.array([(int(u[:16], 16), int(u[16:32], 16)) for u in hex_uids], np.dtype("u8,u8"))
    arr.sort()
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _local(path) -> tuple:
    return storage.filesystem(str(path))


def _pool_rows(root: str) -> list[dict]:
    return [r for p in sorted(glob.glob(f"{root}/pool/*.parquet")) for r in pq.read_table(p).to_pylist()]


def test_uid_keys_match_datacomp_order_and_membership(tmp_path):
    rng = np.random.default_rng(0)
    all_uids = [uuid.UUID(int=int(rng.integers(0, 2**62)) << 66 | i).hex for i in range(200)]
    all_uids += [uuid.uuid4().hex for _ in range(200)]  # high bit set: unsigned order matters
    chosen = sorted(set(all_uids[::3]))
    (tmp_path / "s.npy").write_bytes(_datacomp_npy(chosen))
    subset = uids.load_subset(_local(tmp_path / "s.npy"))
    assert len(subset) == len(chosen)
    hits = uids.in_subset(uids.hex_to_key(all_uids), subset)
    assert [u for u, h in zip(all_uids, hits) if h] == [u for u in all_uids if u in set(chosen)]
    # the keys sort like DataComp's (hi, lo) pairs
    pairs = sorted((int(u[:16], 16), int(u[16:32], 16)) for u in chosen)
    assert [f"{hi:016x}{lo:016x}" for hi, lo in pairs] == [bytes(k).hex() for k in subset.view("u1").reshape(-1, 16)]
    pq.write_table(pa.table({"uid": chosen}), tmp_path / "s.parquet")
    assert np.array_equal(uids.load_subset(_local(tmp_path / "s.parquet")), subset)
    np.save(tmp_path / "bad.npy", np.arange(5.0))
    with pytest.raises(DataError, match="u8,u8"):
        uids.load_subset(_local(tmp_path / "bad.npy"))
    with pytest.raises(DataError, match="no such file"):
        uids.load_subset(_local(tmp_path / "absent.npy"))


def test_subset_configs_round_trip_and_old_configs_dump_as_before():
    from pipelines.data.config import DataConfig

    base = {"pool": {"uri": "p"}, "curated": {"uri": "c"}}
    old = DataConfig.model_validate(base).model_dump(mode="json")
    assert "subset" not in old["pool"] and "scores" not in old["pool"] and old["pool"]["top_fraction"] == 0.15
    for pool, rule in (({"subset": "u.npy"}, "subset"), ({"subset": "u.npy", "top_fraction": 0.3}, "top_fraction")):
        cfg = DataConfig.model_validate({**base, "pool": {"uri": "p", **pool}})
        again = DataConfig.model_validate(cfg.model_dump(mode="json"))
        assert cfg.pool.rule == again.pool.rule == rule and again == cfg
        assert DataConfig.model_validate_json(cfg.model_dump_json()).pool.rule == rule


@pytest.mark.ray
def test_subset_alone_and_with_top_fraction_locally(ray_session, demo_local, tmp_path):
    from pipelines.data.manifest import build_manifest
    from pipelines.data.select import select_pool

    root = demo_local[0]
    rows = _pool_rows(root)
    chosen = sorted({r["uid"] for r in rows[::4]} | {"f" * 32})  # one uid the pool does not have
    (tmp_path / "subset.npy").write_bytes(_datacomp_npy(chosen))
    cfg = demo_config(root, pool__subset=str(tmp_path / "subset.npy"))
    assert cfg.pool.rule == "subset"
    m = build_manifest(cfg, seed=0)
    in_sub = [r for r in rows if r["uid"] in set(chosen)]
    pool = m["pool"]
    assert pool["rule"] == "subset" and pool["score_threshold"] is None
    assert pool["rows_kept"] == len(in_sub) and pool["outside_subset"] == len(rows) - len(in_sub)
    bad = m["skipped"]["corrupt_image"] + m["skipped"]["missing_image"]  # the demo's broken pool samples
    assert m["mix"]["pool_samples"] == len(in_sub) - bad
    # with a top fraction: the exact quantile over the subset's rows only
    cfg = demo_config(root, pool__subset=str(tmp_path / "subset.npy"), pool__top_fraction=0.3)
    sel = select_pool(cfg)
    scores = np.array([r["dfn_score"] for r in in_sub], dtype=np.float32).astype(np.float64)
    assert sel.rule == "top_fraction" and sel.threshold == float(np.quantile(scores, 0.7))
    assert sel.rows_kept == int((scores >= sel.threshold).sum())


def _scores_table(rows: list[dict]) -> pa.Table:
    """Scores of another filter, in their own Parquet keyed by uid (a few pool uids have none)."""
    uid_list = sorted({r["uid"] for r in rows})[5:]
    rng = np.random.default_rng(1)
    return pa.table({"uid": uid_list, "ext_score": rng.random(len(uid_list))})


@pytest.mark.ray
def test_subset_and_joined_scores_on_s3(ray_session, demo_s3, demo_local, s3_env):
    from pipelines.data.manifest import build_manifest

    uri, _ = demo_s3
    rows = _pool_rows(demo_local[0])
    scores = _scores_table(rows)
    chosen = sorted({r["uid"] for r in rows[1::2]})
    fs, _ = storage.filesystem("s3://aim-data", s3_env.cfg)
    storage.write_bytes(fs, "aim-data/subsets/half.npy", _datacomp_npy(chosen))
    buf = io.BytesIO()
    pq.write_table(scores, buf)
    storage.write_bytes(fs, "aim-data/scores/part-0.parquet", buf.getvalue())
    cfg = demo_config(
        uri,
        s3_env.cfg,
        pool__subset="s3://aim-data/subsets/half.npy",
        pool__scores="s3://aim-data/scores",
        pool__score_column="ext_score",
        pool__top_fraction=0.5,
    )
    m = build_manifest(cfg, seed=0)
    by_uid = dict(zip(scores["uid"].to_pylist(), scores["ext_score"].to_pylist()))
    in_sub = [r for r in rows if r["uid"] in set(chosen)]
    have = np.array([by_uid[r["uid"]] for r in in_sub if r["uid"] in by_uid])
    threshold = float(np.quantile(have, 0.5))
    pool = m["pool"]
    assert pool["score_threshold"] == threshold and pool["rows_kept"] == int((have >= threshold).sum())
    assert pool["missing_score"] == len(in_sub) - len(have) and pool["scores"] == "s3://aim-data/scores"
    assert pool["outside_subset"] == len(rows) - len(in_sub)
    assert m["mix"]["pool_samples"] > 0
