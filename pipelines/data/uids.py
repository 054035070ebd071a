"""uid lists and uid-keyed scores: DataComp subset files and score Parquet joined on uid.

A uid is DataComp's 128-bit hash, written as 32 hex characters in the metadata Parquet. A subset file is
either a `.npy` as DataComp's baselines write it (a sorted structured array of dtype `u8,u8`: the high and
low 64 bits, from `int(uid[:16], 16), int(uid[16:32], 16)`; an (N, 2) uint64 array also works) or a
Parquet file with a `uid` column of hex strings. Scores may live in a separate Parquet file or directory
(`uid` + the score column) instead of each shard's metadata.

Both are loaded once per worker process (a module cache keyed by location, size and mtime) as a sorted
`S16` array of big-endian uid bytes (16 B per uid; + 8 B per score): each shard is then filtered with
`np.searchsorted`, O(rows log N), and nothing about the pool's uids reaches the driver. Scale limit: the
subset (and score table) must fit in every worker process's memory, e.g. 100 M uids = 1.6 GB each.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines import storage
from pipelines.data.errors import DataError

__all__ = ["hex_to_key", "load_subset", "load_scores", "in_subset", "lookup_scores"]

_CACHE: dict[tuple, object] = {}


_HEX = np.full(256, 255, dtype=np.uint8)
_HEX[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10)
_HEX[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16)
_HEX[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16)


def hex_to_key(uids) -> np.ndarray:
    """32-hex-character uids (an Arrow array or a list; nulls allowed) -> S16 big-endian keys, vectorised
    (null -> all zero bytes). Anything but 32 hex characters is an error naming the uid."""
    if not hasattr(uids, "to_numpy"):
        uids = pa.array(list(uids), pa.string())
    valid = pc.is_valid(uids).to_numpy(zero_copy_only=False)
    raw = pc.fill_null(uids, "0" * 32).to_numpy(zero_copy_only=False).astype("S33")  # S33: spots long ones
    nib = _HEX[raw.view(np.uint8).reshape(-1, 33)[:, :32]]
    bad = (nib == 255).any(axis=1) | (raw.view(np.uint8).reshape(-1, 33)[:, 32] != 0)
    if bad.any():
        raise DataError(f"uid {raw[bad][0].decode(errors='replace')!r} is not 32 hex characters (a 128-bit uid)")
    keys = (nib[:, 0::2] << 4 | nib[:, 1::2]).astype(np.uint8).copy().view("S16").reshape(-1)
    keys[~valid] = b""
    return keys


def _pairs_to_key(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    both = np.empty((len(hi), 2), dtype=">u8")
    both[:, 0], both[:, 1] = hi, lo
    return both.view("S16").reshape(-1)


def _npy_keys(fs, path: str) -> np.ndarray:
    import io

    arr = np.load(io.BytesIO(storage.read_bytes(fs, path)), allow_pickle=False)
    if arr.dtype.names and len(arr.dtype.names) == 2 and arr.ndim == 1:
        hi, lo = (arr[n].astype(np.uint64) for n in arr.dtype.names)
    elif arr.ndim == 2 and arr.shape[1] == 2 and arr.dtype.kind == "u":
        hi, lo = arr[:, 0].astype(np.uint64), arr[:, 1].astype(np.uint64)
    else:
        raise DataError(
            f"{storage.display(fs, path)}: a subset .npy must hold uids as dtype 'u8,u8' (DataComp) or an "
            f"(N, 2) uint64 array, got dtype {arr.dtype} shape {arr.shape}"
        )
    return _pairs_to_key(hi, lo)


def _parquet_table(fs, path: str, columns: list[str]) -> pa.Table:
    """`columns` of one Parquet file, or of every *.parquet under a directory."""
    if fs.get_file_info(path).type == pafs.FileType.File:
        paths = [path]
    else:
        paths = [i.path for i in storage.list_dir(fs, path, recursive=True) if i.base_name.endswith(".parquet")]
    if not paths:
        raise DataError(f"{storage.display(fs, path)}: no Parquet files")
    tables = []
    for p in paths:
        with fs.open_input_file(p) as f:
            pf = pq.ParquetFile(f)
            missing = [c for c in columns if c not in pf.schema_arrow.names]
            if missing:
                raise DataError(f"{storage.display(fs, p)}: no column {missing[0]!r}")
            tables.append(pf.read(columns=columns))
    return pa.concat_tables(tables)


def _cached(kind: str, where: tuple, load):
    """`load(fs, path)` once per process and file version; `where` = (filesystem, path) as the driver
    resolved it (a filesystem made there carries the credentials into Ray workers)."""
    fs, path = where
    try:
        info = fs.get_file_info(path)
    except OSError as e:
        raise storage.storage_error(e, fs, path, "checking") from None
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"{storage.display(fs, path)}: no such file ({kind})")
    key = (kind, storage.display(fs, path), info.size, info.mtime_ns)
    if key not in _CACHE:
        try:
            _CACHE[key] = load(fs, path)
        except (OSError, pa.ArrowInvalid) as e:
            raise DataError(f"{storage.display(fs, path)}: cannot read {kind} ({str(e).splitlines()[0]})") from None
    return _CACHE[key]


def load_subset(where: tuple) -> np.ndarray:
    """The subset's uids as a sorted, unique S16 array (cached per process); `where` = (fs, path)."""

    def load(fs, path):
        if path.endswith(".npy"):
            keys = _npy_keys(fs, path)
        else:
            keys = hex_to_key(_parquet_table(fs, path, ["uid"])["uid"])
        return np.unique(keys)

    return _cached("subset", where, load)


def load_scores(where: tuple, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(sorted S16 uids, float64 scores) from Parquet with `uid` and `column` (cached per process)."""

    def load(fs, path):
        t = _parquet_table(fs, path, ["uid", column])
        keys = hex_to_key(t["uid"])
        values = pc.cast(t[column], pa.float64()).to_numpy(zero_copy_only=False)
        order = np.argsort(keys, kind="stable")
        return keys[order], values[order]

    return _cached(f"scores:{column}", where, load)


def in_subset(keys: np.ndarray, subset: np.ndarray) -> np.ndarray:
    if not len(subset):
        return np.zeros(len(keys), dtype=bool)
    i = np.minimum(np.searchsorted(subset, keys), len(subset) - 1)
    return subset[i] == keys


def lookup_scores(keys: np.ndarray, table: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Score per key (NaN where the score table has no such uid)."""
    sk, sv = table
    out = np.full(len(keys), np.nan)
    if len(sk):
        i = np.minimum(np.searchsorted(sk, keys), len(sk) - 1)
        hit = sk[i] == keys
        out[hit] = sv[i[hit]]
    return out
