"""`aimctl data build`: run selection and mixing for one epoch and describe the result as JSON.

The data version is a hash of the inputs' listings (relative path, size, modification time of every
pool and curated file) plus the selection settings, so a changed shard or rule gives a new version.
"""

from __future__ import annotations

import hashlib
import json
import math
import time

from pipelines import storage
from pipelines.data.config import DataConfig
from pipelines.data.quality import REASONS

__all__ = ["data_version", "build_manifest", "write_manifest"]


def _listing(uri: str, cfg: DataConfig) -> list[str]:
    fs, root = storage.filesystem(uri, cfg.s3)
    lines = []
    for info in storage.list_dir(fs, root):
        mtime = info.mtime_ns if info.mtime_ns is not None else -1
        lines.append(f"{info.path[len(root) :].lstrip('/')}\t{info.size}\t{mtime}")
    return lines


def _file_line(uri: str, cfg: DataConfig) -> list[str]:
    """The listing of a uid/score file or directory (subset, scores)."""
    import pyarrow.fs as pafs

    fs, path = storage.filesystem(uri, cfg.s3)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        return _listing(uri, cfg)
    info = fs.get_file_info(path)
    return [f"\t{info.size}\t{info.mtime_ns if info.mtime_ns is not None else -1}"]


def data_version(cfg: DataConfig) -> str:
    h = hashlib.sha256()
    for section, uri in (("pool", cfg.pool.uri), ("curated", cfg.curated.uri)):
        for line in _listing(uri, cfg):
            h.update(f"{section}\t{line}\n".encode())
    for section, uri in (("subset", cfg.pool.subset), ("scores", cfg.pool.scores)):
        for line in _file_line(uri, cfg) if uri else []:
            h.update(f"{section}\t{line}\n".encode())
    h.update(cfg.pool.model_dump_json(exclude={"uri"}).encode())
    h.update(cfg.curated.model_dump_json(exclude={"uri"}).encode())
    return "sha256:" + h.hexdigest()[:32]


def _pool_section(cfg: DataConfig, sel) -> dict:
    seen, dup, missing, kept = (sel.total("rows"), sel.total("duplicates"), sel.total("missing_score"), sel.rows_kept)
    nd, outside = sel.total("not_downloaded"), sel.total("outside_subset")
    return {
        "uri": cfg.pool.uri,
        "shards": len(sel.shards),
        "rows_seen": seen,
        "rows_kept": kept,
        "kept_fraction": kept / seen if seen else 0.0,
        "score_column": sel.score_column if sel.rule != "subset" else None,
        "scores": cfg.pool.scores if sel.rule != "subset" else None,
        "rule": sel.rule,
        "subset": cfg.pool.subset,
        "score_threshold": sel.threshold if math.isfinite(sel.threshold) else None,
        "top_fraction": sel.top_fraction,
        # metadata rows img2dataset tried but never stored (status != success): not samples, never bad
        "not_downloaded": nd,
        "not_downloaded_by_reason": sel.not_downloaded_by(),
        "not_downloaded_by_shard": {n: dict(c.not_downloaded_by) for n, c in sel.counts.items() if c.not_downloaded},
        "duplicates_dropped": dup,
        "outside_subset": outside,
        "missing_score": missing,
        "below_threshold": seen - nd - dup - outside - missing - kept,
    }


def build_manifest(cfg: DataConfig, seed: int, epoch: int = 0, img_size: int = 32) -> dict:
    """Select, plan and stream one epoch through decode + augment, counting what comes out."""
    from pipelines.data.pipeline import build_epoch

    t0 = time.perf_counter()
    built = build_epoch(cfg, img_size, seed, epoch, keep_source=True, fresh_selection=True)
    n_pool = n_cur = 0
    for batch in built.ds.iter_batches(batch_size=1024, batch_format="numpy"):
        p = int(batch["is_pool"].sum())
        n_pool, n_cur = n_pool + p, n_cur + len(batch["is_pool"]) - p
    quality = built.tracker.summary()
    pool = _pool_section(cfg, built.selection)
    plan, cur = built.plan, built.curated
    skipped = {
        "duplicate_uid": pool["duplicates_dropped"],
        "outside_subset": pool["outside_subset"],
        "missing_score": pool["missing_score"],
        "below_threshold": pool["below_threshold"],
        **dict.fromkeys(REASONS, 0),
    }
    skipped.update(quality["by_reason"])
    total = n_pool + n_cur
    return {
        "data_version": data_version(cfg),
        "seed": seed,
        "epoch": epoch,
        "img_size": img_size,
        "pool": pool,
        "curated": {
            "uri": cfg.curated.uri,
            "format": cfg.curated.format,
            "split": cfg.curated.split,
            "files": [f.path.rsplit("/", 1)[-1] for f in cur.files],
            "rows": cur.rows,
            "samples_planned": plan.n_curated,
        },
        "mix": {
            "pool_probability": cfg.mix.pool_probability,
            "samples_planned": plan.n_slots,
            "samples_out": total,
            "pool_samples": n_pool,
            "curated_samples": n_cur,
            "realised_pool_fraction": n_pool / total if total else 0.0,
        },
        "skipped": skipped,
        "skipped_by_shard": quality["by_shard"],
        "seconds": round(time.perf_counter() - t0, 2),
    }


def write_manifest(manifest: dict, path: str, cfg: DataConfig) -> None:
    fs, p = storage.filesystem(path, cfg.s3)
    storage.write_bytes(fs, p, (json.dumps(manifest, indent=2) + "\n").encode())
