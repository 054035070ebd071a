"""`aimctl data convert`: labelled Parquet (e.g. CIFAR-10) -> pool or curated layout.

As a pool (WebDataset shards + metadata Parquet), the fields the source lacks are derived, not real:
- `uid` = md5 of "<source file name>/<row index>"; `key` = shard number (5 digits) + row in shard (4);
- `caption` = "a photo of a <label_name>" (or "a photo of class <label>");
- `dfn_score` = a uniform number in [0, 1) from the uid's hash, and `clip_b32_score` another one: they
  are deterministic placeholders that carry no information about image quality, so top-fraction
  selection on a converted pool is a reproducible random subset.
As a curated set: Parquet (`image`, `label`, `label_name`, `split`) or WebDataset (`KEY.jpg`, `KEY.cls`,
`KEY.json`) + an index `NAME.parquet` (`key`, `label`), keeping the split in the file names.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipelines import storage
from pipelines.data import formats
from pipelines.data.config import S3Config
from pipelines.data.errors import DataError

__all__ = ["convert", "ConvertResult", "derived_scores"]


@dataclass
class ConvertResult:
    out: str
    files: int = 0
    rows: int = 0


@dataclass
class _Row:
    image: bytes
    label: int
    label_name: str
    split: str
    uid: str


def derived_scores(uid: str) -> tuple[float, float]:
    """The placeholder (dfn_score, clip_b32_score) of a converted row: uniform in [0, 1), from the uid."""
    h = hashlib.sha256(uid.encode()).digest()
    return int.from_bytes(h[:8], "little") / 2**64, int.from_bytes(h[8:16], "little") / 2**64


def _source_rows(fs, root: str, limit: int | None) -> Iterator[_Row]:
    infos = [i for i in storage.list_dir(fs, root) if i.base_name.endswith(".parquet")]
    if not infos:
        raise DataError(f"no Parquet files in {storage.display(fs, root)}")
    n = 0
    for info in infos:
        split = next(
            (s for s in ("train", "test", "val", "validation") if formats.split_matches(info.base_name, s)), "train"
        )
        with fs.open_input_file(info.path) as f:
            pf = pq.ParquetFile(f)
            names = pf.schema_arrow.names
            if "image" not in names or "label" not in names:
                raise DataError(f"{storage.display(fs, info.path)}: needs `image` and `label` columns")
            for batch in pf.iter_batches(batch_size=2048):
                d = batch.to_pydict()
                for i in range(batch.num_rows):
                    if limit is not None and n >= limit:
                        return
                    label = int(d["label"][i])
                    name = d["label_name"][i] if "label_name" in d else f"class {label}"
                    uid = hashlib.md5(f"{info.base_name}/{n}".encode()).hexdigest()
                    yield _Row(d["image"][i], label, name, d["split"][i] if "split" in d else split, uid)
                    n += 1


def _chunks(rows: Iterator[_Row], size: int) -> Iterator[list[_Row]]:
    chunk: list[_Row] = []
    for r in rows:
        chunk.append(r)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _write_pool_shard(fs, root: str, shard: int, rows: list[_Row]) -> None:
    meta, samples = [], []
    for i, r in enumerate(rows):
        key = f"{shard:05d}{i:04d}"
        width, height = Image.open(io.BytesIO(r.image)).size
        dfn, clip = derived_scores(r.uid)
        row = {
            "uid": r.uid,
            "key": key,
            "caption": f"a photo of a {r.label_name}",
            "width": width,
            "height": height,
            "dfn_score": dfn,
            "clip_b32_score": clip,
        }
        meta.append(row)
        samples.append((key, {"jpg": r.image, "txt": row["caption"].encode(), "json": json.dumps(row).encode()}))
    storage.write_bytes(fs, f"{root}/{shard:05d}.tar", formats.wds_bytes(samples))
    schema = formats.POOL_META_SCHEMA.append(pa.field("dfn_score", pa.float32())).append(
        pa.field("clip_b32_score", pa.float32())
    )
    _write_parquet(fs, f"{root}/{shard:05d}.parquet", pa.Table.from_pylist(meta, schema=schema))


def _write_parquet(fs, path: str, table: pa.Table, row_group_size: int | None = None) -> None:
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf, row_group_size=row_group_size)
    storage.write_bytes(fs, path, buf.getvalue().to_pybytes())


def _write_curated(fs, root: str, name: str, split: str, idx: int, rows: list[_Row], fmt: str) -> str:
    stem = f"{root}/{name}_{split}-{idx:05d}"
    if fmt == "parquet":
        table = pa.table(
            {
                "image": pa.array([r.image for r in rows], pa.binary()),
                "label": pa.array([r.label for r in rows], pa.int64()),
                "label_name": [r.label_name for r in rows],
                "split": [r.split for r in rows],
            }
        )
        _write_parquet(fs, f"{stem}.parquet", table, row_group_size=1024)
        return stem
    keys = [f"{idx:05d}{i:05d}" for i in range(len(rows))]
    samples = [
        (
            k,
            {
                "jpg": r.image,
                "cls": str(r.label).encode(),
                "json": json.dumps({"label": r.label, "label_name": r.label_name}).encode(),
            },
        )
        for k, r in zip(keys, rows)
    ]
    storage.write_bytes(fs, f"{stem}.tar", formats.wds_bytes(samples))
    _write_parquet(fs, f"{stem}.parquet", pa.table({"key": keys, "label": [r.label for r in rows]}))
    return stem


def convert(
    src: str,
    out: str,
    as_: str,
    fmt: str = "parquet",
    shard_size: int = 1000,
    limit: int | None = None,
    name: str | None = None,
    s3: S3Config | None = None,
) -> ConvertResult:
    """Convert labelled Parquet at `src` into a pool (`as_="pool"`) or curated set (`as_="curated"`)."""
    if as_ not in ("pool", "curated"):
        raise ValueError(f"--as: expected pool or curated, got {as_!r}")
    sfs, sroot = storage.filesystem(src, s3)
    ofs, oroot = storage.filesystem(out, s3)
    name = name or sroot.rstrip("/").rsplit("/", 1)[-1] or "data"
    result = ConvertResult(out)
    rows = _source_rows(sfs, sroot, limit)
    if as_ == "pool":
        for shard, chunk in enumerate(_chunks(rows, shard_size)):
            _write_pool_shard(ofs, oroot, shard, chunk)
            result.files, result.rows = result.files + 1, result.rows + len(chunk)
        return result
    by_split: dict[str, list[_Row]] = {}
    counters: dict[str, int] = {}
    for r in rows:
        buf = by_split.setdefault(r.split, [])
        buf.append(r)
        if len(buf) == shard_size:
            _flush(ofs, oroot, name, r.split, buf, fmt, counters, result)
    for split, buf in by_split.items():
        if buf:
            _flush(ofs, oroot, name, split, buf, fmt, counters, result)
    return result


def _flush(fs, root, name, split, buf, fmt, counters, result) -> None:
    idx = counters.get(split, 0)
    _write_curated(fs, root, name, split, idx, list(buf), fmt)
    counters[split] = idx + 1
    result.files, result.rows = result.files + 1, result.rows + len(buf)
    buf.clear()
