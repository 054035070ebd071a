"""On-storage formats: WebDataset tar shards, pool metadata Parquet, curated Parquet / WebDataset.

Pool (DataComp / img2dataset layout): `NAME.tar` holding `KEY.jpg`, `KEY.txt`, `KEY.json` per sample,
and `NAME.parquet` with one row per sample: `uid`, `key`, `caption`, `width`, `height` and score columns.
Curated: Parquet with image bytes (or a Hugging Face `Image()` struct of `bytes` + `path`) + label (e.g.
`cifar10_train-00-of-02.parquet`, `train-00000-of-00001.parquet`), or WebDataset shards
`NAME.tar` with `KEY.jpg` + `KEY.cls` (+ an optional `NAME.parquet` index of `key`, `label`).
"""

from __future__ import annotations

import io
import re
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines import storage
from pipelines.data.errors import DataError

__all__ = [
    "PoolShard",
    "CuratedFile",
    "POOL_META_SCHEMA",
    "wds_bytes",
    "iter_wds",
    "list_pool_shards",
    "list_curated",
    "read_metadata",
    "read_curated_chunk",
    "split_matches",
    "image_bytes",
]

POOL_META_SCHEMA = pa.schema(
    [
        ("uid", pa.string()),
        ("key", pa.string()),
        ("caption", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
    ]
)
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


@dataclass(frozen=True)
class PoolShard:
    name: str
    tar: str
    meta: str
    size: int  # bytes of tar + metadata (for the data version)


@dataclass(frozen=True)
class CuratedFile:
    path: str
    size: int
    fmt: str  # "parquet" | "wds"
    chunk_rows: tuple[int, ...]  # rows per chunk (Parquet row group / whole tar) after the split filter
    split_filter: bool  # rows must be filtered by the `split` column when read


def wds_bytes(samples: Iterable[tuple[str, dict[str, bytes]]]) -> bytes:
    """A WebDataset tar (in memory) from (key, {ext: bytes}) samples; deterministic (mtime 0, sorted exts)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, files in samples:
            for ext in sorted(files):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(files[ext]), 0, 0o644
                tar.addfile(info, io.BytesIO(files[ext]))
    return buf.getvalue()


def iter_wds(fs: pafs.FileSystem, path: str, exts: set[str] | None = None) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Stream (key, {ext: bytes}) from a WebDataset tar; members of one key are consecutive, as written."""
    try:
        stream = fs.open_input_stream(path)
    except OSError as e:
        raise storage.storage_error(e, fs, path, "opening shard") from None
    try:
        tar = tarfile.open(fileobj=stream, mode="r|")
    except tarfile.TarError as e:  # zero bytes, or not a tar at all (a cut-off tar still opens)
        stream.close()
        raise DataError(f"{storage.display(fs, path)}: not a readable tar ({e})") from None
    with stream, tar:
        key, files = None, {}
        members = iter(tar)
        while True:
            try:  # the stream reads as it goes: the endpoint can fail mid-shard
                member = next(members, None)
                if member is None:
                    break
                if not member.isfile():
                    continue
                data = tar.extractfile(member).read()
            except storage.StorageError:
                raise
            except OSError as e:
                raise storage.storage_error(e, fs, path, "reading shard") from None
            base = member.name.rsplit("/", 1)[-1]
            k, _, ext = base.partition(".")
            k = member.name[: len(member.name) - len(base)] + k
            if k != key and key is not None:
                yield key, files
                files = {}
            key = k
            if exts is None or ext.lower() in exts:
                files[ext.lower()] = data
        if key is not None:
            yield key, files


def list_pool_shards(fs: pafs.FileSystem, root: str) -> list[PoolShard]:
    """Pool shards under `root`: every NAME.tar must have NAME.parquet and vice versa."""
    infos = storage.list_dir(fs, root)
    tars = {i.base_name[:-4]: i for i in infos if i.base_name.endswith(".tar")}
    metas = {i.base_name[:-8]: i for i in infos if i.base_name.endswith(".parquet")}
    where = storage.display(fs, root)
    for name in sorted(set(tars) ^ set(metas)):
        have, lack = ("parquet", "tar") if name in metas else ("tar", "parquet")
        raise DataError(f"pool shard {name!r} in {where}: {name}.{have} exists but {name}.{lack} is missing")
    if not tars:
        raise DataError(f"no pool shards (NAME.tar + NAME.parquet) in {where}")
    return [PoolShard(n, tars[n].path, metas[n].path, tars[n].size + metas[n].size) for n in sorted(tars)]


def split_matches(name: str, split: str) -> bool:
    """`cifar10_train-00-of-02.parquet` matches split "train" (the `_SPLIT-` / `SPLIT-` naming convention)."""
    return re.search(rf"(^|[_/.-]){re.escape(split)}([_.-]|$)", name.rsplit(".", 1)[0]) is not None


def read_metadata(fs: pafs.FileSystem, path: str, columns: list[str], optional: tuple[str, ...] = ()) -> pa.Table:
    """`columns` (each required) plus those of `optional` the file has (img2dataset's `status`)."""
    try:
        with fs.open_input_file(path) as f:
            pf = pq.ParquetFile(f)
            names = pf.schema_arrow.names
            missing = [c for c in columns if c not in names]
            if missing:
                raise DataError(f"{storage.display(fs, path)}: no column {missing[0]!r} (has {', '.join(names)})")
            return pf.read(columns=list(dict.fromkeys(columns + [c for c in optional if c in names])))
    except pa.ArrowInvalid as e:  # zero bytes, or not Parquet
        raise DataError(
            f"{storage.display(fs, path)}: not a readable Parquet file ({str(e).splitlines()[0]})"
        ) from None
    except OSError as e:
        raise storage.storage_error(e, fs, path, "reading metadata") from None


def list_curated(fs: pafs.FileSystem, root: str, fmt: str, split: str | None, label: str) -> list[CuratedFile]:
    ext = ".parquet" if fmt == "parquet" else ".tar"
    infos = [i for i in storage.list_dir(fs, root) if i.base_name.endswith(ext)]
    where = storage.display(fs, root)
    if not infos:
        raise DataError(f"no curated {fmt} files (*{ext}) in {where}")
    by_name = [i for i in infos if split and split_matches(i.base_name, split)]
    use_column = bool(split) and not by_name and fmt == "parquet"
    chosen = by_name or infos
    out = [_curated_file(fs, i, fmt, split if use_column else None, label) for i in chosen]
    if not sum(sum(f.chunk_rows) for f in out):
        raise DataError(f"curated set {where} has no rows" + (f" for split {split!r}" if split else ""))
    return out


def _curated_file(fs, info: pafs.FileInfo, fmt: str, split: str | None, label: str) -> CuratedFile:
    if fmt == "wds":
        return CuratedFile(info.path, info.size, fmt, (_wds_rows(fs, info.path),), False)
    try:
        with fs.open_input_file(info.path) as f:
            pf = pq.ParquetFile(f)
            if label not in pf.schema_arrow.names:
                raise DataError(f"{storage.display(fs, info.path)}: no label column {label!r}")
            if split is None or "split" not in pf.schema_arrow.names:
                rows = tuple(pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups))
                return CuratedFile(info.path, info.size, fmt, rows, False)
            rows = tuple(
                int(pc.sum(pc.equal(pf.read_row_group(i, ["split"])["split"], split)).as_py() or 0)
                for i in range(pf.num_row_groups)
            )
    except OSError as e:
        raise storage.storage_error(e, fs, info.path, "reading") from None
    return CuratedFile(info.path, info.size, fmt, rows, True)


def _wds_rows(fs: pafs.FileSystem, tar_path: str) -> int:
    """Samples in a curated tar: from its NAME.parquet index when present, else by scanning the tar."""
    index = tar_path[:-4] + ".parquet"
    if storage.exists(fs, index):
        with fs.open_input_file(index) as f:
            return pq.ParquetFile(f).metadata.num_rows
    return sum(1 for _, files in iter_wds(fs, tar_path) if any(e in files for e in IMAGE_EXTS))


def read_curated_chunk(
    fs: pafs.FileSystem, file: CuratedFile, chunk: int, image: str, label: str, split: str | None
) -> tuple[list[bytes | None], list[int]]:
    """Image bytes (None when absent) and labels of one chunk, in stored order, after the split filter."""
    if file.fmt == "wds":
        images, labels = [], []
        for _, files in iter_wds(fs, file.path):
            img = files.get(image) or next((files[e] for e in IMAGE_EXTS if e in files), None)
            if img is None and not any(e in files for e in ("cls", "json")):
                continue
            images.append(img)
            labels.append(_wds_label(files, label))
        return images, labels
    try:
        with fs.open_input_file(file.path) as f:
            cols = [image, label] + (["split"] if file.split_filter else [])
            table = pq.ParquetFile(f).read_row_group(chunk, columns=cols)
    except OSError as e:
        raise storage.storage_error(e, fs, file.path, "reading") from None
    if file.split_filter:
        table = table.filter(pc.equal(table["split"], split))
    return image_bytes(table[image]), table[label].to_pylist()


def image_bytes(column: pa.ChunkedArray) -> list[bytes | None]:
    """Encoded images from a Parquet column: plain binary, or a struct with a `bytes` field (and `path`), as
    Hugging Face `datasets` writes an `Image()` feature. A row without bytes is None (a missing image)."""
    if pa.types.is_struct(column.type):
        if column.type.get_field_index("bytes") < 0:
            raise DataError(f"image column is a struct without a 'bytes' field ({column.type})")
        column = pc.struct_field(column, "bytes")
    return column.to_pylist()


def _wds_label(files: dict[str, bytes], field: str) -> int:
    import json

    if "cls" in files:
        return int(files["cls"].decode().strip())
    if "json" in files:
        return int(json.loads(files["json"])[field])
    return -1
