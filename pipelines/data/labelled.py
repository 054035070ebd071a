"""Labelled images for probes: deterministic views (centre crop, resize, normalise), no Ray needed.

Reads labelled Parquet (`image` bytes + `label`, files `*_train-*.parquet` / `*_test-*.parquet` or a
`split` column, as in shared/data/cifar10; or Hugging Face `datasets` Parquet, `image` a struct of `bytes`
+ `path`, files `train-00000-of-00001.parquet`) or curated WebDataset shards, from a local directory or S3.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines import storage
from pipelines.data import formats
from pipelines.data.augment import eval_image
from pipelines.data.config import IMAGENET_MEAN, IMAGENET_STD, CuratedConfig, DataConfig, S3Config
from pipelines.data.errors import DataError

__all__ = ["load_labelled", "read_labelled_rows"]


def _files(fs, root: str, fmt: str, split: str) -> tuple[list[str], bool]:
    """(files of the split, whether rows must be filtered by the `split` column)."""
    ext = ".parquet" if fmt == "parquet" else ".tar"
    infos = [i for i in storage.list_dir(fs, root) if i.base_name.endswith(ext)]
    named = [i.path for i in infos if formats.split_matches(i.base_name, split)]
    if named:
        return named, False
    if not infos:
        raise DataError(f"no labelled {fmt} files (*{ext}) in {storage.display(fs, root)}")
    if fmt == "wds":
        raise DataError(f"{storage.display(fs, root)}: no shard named *_{split}-*.tar")
    return [i.path for i in infos], True


def _parquet_rows(fs, path: str, cur: CuratedConfig, split: str, by_column: bool):
    cols = [cur.image_column, cur.label_column]
    with fs.open_input_file(path) as f:
        pf = pq.ParquetFile(f)
        names = pf.schema_arrow.names
        if by_column and "split" not in names:
            raise DataError(
                f"{storage.display(fs, path)}: cannot tell the {split!r} split (no *_{split}-* file "
                "name and no `split` column)"
            )
        for c in cols:
            if c not in names:
                raise DataError(f"{storage.display(fs, path)}: no column {c!r}")
        for batch in pf.iter_batches(batch_size=4096, columns=cols + (["split"] if by_column else [])):
            table = pa.Table.from_batches([batch])
            if by_column:
                table = table.filter(pc.equal(table["split"], split))
            yield from zip(formats.image_bytes(table[cur.image_column]), table[cur.label_column].to_pylist())


def read_labelled_rows(
    cur: CuratedConfig, s3: S3Config | None, split: str, limit: int | None = None
) -> tuple[list[bytes], list[int]]:
    """Encoded images and labels of `split`, in file order (files sorted by name), first `limit` rows."""
    fs, root = storage.filesystem(cur.uri, s3)
    paths, by_column = _files(fs, root, cur.format, split)
    images, labels = [], []
    for path in paths:
        try:
            rows = (
                _parquet_rows(fs, path, cur, split, by_column) if cur.format == "parquet" else _wds_rows(fs, path, cur)
            )
            for img, label in rows:
                if limit is not None and len(images) >= limit:
                    return images, labels
                images.append(img)
                labels.append(int(label))
        except OSError as e:
            raise storage.storage_error(e, fs, path, "reading") from None
    if not images:
        raise DataError(f"{cur.uri}: no {split!r} rows")
    return images, labels


def _wds_rows(fs, path: str, cur: CuratedConfig):
    file = formats.CuratedFile(path, 0, "wds", (0,), False)
    images, labels = formats.read_curated_chunk(fs, file, 0, cur.image_column, cur.label_column, None)
    yield from zip(images, labels)


def load_labelled(
    uri_or_cfg: str | DataConfig | CuratedConfig,
    split: str,
    img_size: int,
    limit: int | None = None,
    *,
    s3: S3Config | None = None,
    mean=None,
    std=None,
    threads: int = 4,
):
    """(images float32 (N, 3, S, S), labels int64 (N,)) as torch tensors: centre crop, resize, normalise.

    `uri_or_cfg`: a Parquet location (local or s3://), a `CuratedConfig`, or a `DataConfig` (its curated
    set, S3 settings and normalisation). Deterministic: same files -> same tensors.
    """
    import torch

    if isinstance(uri_or_cfg, DataConfig):
        cur, s3 = uri_or_cfg.curated, s3 or uri_or_cfg.s3
        mean, std = mean or uri_or_cfg.augment.mean, std or uri_or_cfg.augment.std
    elif isinstance(uri_or_cfg, CuratedConfig):
        cur = uri_or_cfg
    else:
        cur = CuratedConfig(uri=uri_or_cfg)
    mean, std = mean or IMAGENET_MEAN, std or IMAGENET_STD
    images, labels = read_labelled_rows(cur, s3, split, limit)

    def one(data: bytes) -> np.ndarray:
        try:
            return eval_image(data, img_size, mean, std)
        except Exception as e:  # noqa: BLE001
            raise DataError(f"{cur.uri}: undecodable {split!r} image ({type(e).__name__})") from None

    with ThreadPoolExecutor(threads) as pool:
        arrays = list(pool.map(one, images, chunksize=256))
    return torch.from_numpy(np.stack(arrays)), torch.tensor(labels, dtype=torch.int64)
