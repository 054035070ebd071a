"""`aimctl data demo`: a small pool + curated set, generated offline, in the real on-storage formats.

Pool images are procedural scenes (gradient + shapes) with a high score, plus junk (noise, flat colour)
with a low score, so top-fraction filtering has something to remove. A few high-score samples are
broken on purpose: a truncated JPEG, bytes that are not an image, a metadata row whose image is missing
from the tar, and uids repeated across shards (for de-duplication). `DemoSummary` lists them.
The curated set is 10 classes (shape x colour) as labelled Parquet with train/test splits.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from pipelines import storage
from pipelines.data.config import S3Config
from pipelines.data.formats import wds_bytes

__all__ = ["DemoSummary", "write_demo", "CLASS_NAMES"]

_COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
    "purple": (150, 50, 190),
}
_SHAPES = ("circle", "square")
CLASS_NAMES = [f"{c} {s}" for s in _SHAPES for c in _COLOURS]


@dataclass
class DemoSummary:
    pool_uri: str
    curated_uri: str
    pool_rows: int = 0
    curated_rows: dict[str, int] = field(default_factory=dict)
    corrupt: list[list[str]] = field(default_factory=list)  # [shard, key, kind]
    missing: list[list[str]] = field(default_factory=list)  # [shard, key]
    duplicates: list[list[str]] = field(default_factory=list)  # [shard, key, uid]


def _jpeg(arr: np.ndarray, quality: int = 88) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _scene(rng: np.random.Generator, w: int, h: int, cls: int | None = None) -> np.ndarray:
    """A gradient background with shapes; `cls` fixes the main shape/colour (curated classes)."""
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, w)[None, :, None] * 0.6 + np.linspace(0, 1, h)[:, None, None] * 0.4
    img = Image.fromarray((c0 * (1 - t) + c1 * t).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    n = int(rng.integers(1, 4))
    for i in range(n):
        main = cls is not None and i == n - 1  # the class's shape is drawn last: never occluded
        shape = _SHAPES[cls // len(_COLOURS)] if main else _SHAPES[int(rng.integers(2))]
        colour = list(_COLOURS.values())[cls % len(_COLOURS)] if main else tuple(rng.integers(0, 256, 3).tolist())
        s = int(min(w, h) * rng.uniform(0.35, 0.6 if main else 0.35))
        x, y = int(rng.integers(0, max(w - s, 1))), int(rng.integers(0, max(h - s, 1)))
        (draw.ellipse if shape == "circle" else draw.rectangle)([x, y, x + s, y + s], fill=tuple(colour))
    arr = np.asarray(img, dtype=np.int16) + rng.integers(-6, 7, (h, w, 3))
    return np.clip(arr, 0, 255).astype(np.uint8)


def _junk(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    if rng.random() < 0.5:
        return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return np.full((h, w, 3), rng.integers(0, 256, 3), dtype=np.uint8)


def _uid(*parts) -> str:
    return hashlib.md5("/".join(map(str, parts)).encode()).hexdigest()


def _pool_sample(rng: np.random.Generator, size: int, shard: int, i: int) -> tuple[dict, bytes]:
    w, h = (int(size * rng.uniform(0.75, 1.5)) for _ in range(2))
    junk = rng.random() < 0.3
    arr = _junk(rng, w, h) if junk else _scene(rng, w, h)
    score = float(np.clip(rng.normal(0.1, 0.05) if junk else rng.normal(0.55, 0.15), 0, 0.95))
    key = f"{shard:05d}{i:04d}"
    row = {
        "uid": _uid("demo", shard, i),
        "key": key,
        "caption": "noise" if junk else "shapes on a gradient",
        "width": w,
        "height": h,
        "dfn_score": score,
        "clip_b32_score": score * 0.5 + float(rng.random()) * 0.5,
    }
    return row, _jpeg(arr)


def _break_samples(shard: int, rows: list[dict], images: list[bytes | None], summary: DemoSummary) -> None:
    """Corrupt a few high-score samples in place (shard 0: truncated JPEG; 1: not an image; last: missing)."""
    kinds = {0: "truncated", 1: "not_an_image"}
    if shard in kinds:
        i = 3
        images[i] = images[i][: len(images[i]) // 3] if shard == 0 else b"this is not an image" * 8
        rows[i]["dfn_score"] = 0.99
        summary.corrupt.append([f"{shard:05d}", rows[i]["key"], kinds[shard]])


def _write_pool(fs, root: str, n_shards: int, per_shard: int, size: int, rng, summary: DemoSummary) -> None:
    first_rows: list[tuple[dict, bytes]] = []
    for shard in range(n_shards):
        rows, images = zip(*(_pool_sample(rng, size, shard, i) for i in range(per_shard)))
        rows, images = list(rows), list(images)
        if shard == 0:
            first_rows = [(dict(rows[i]), images[i]) for i in (5, 6)]
        elif shard <= 2 and first_rows:  # re-posted images: same uid, another shard
            row, img = first_rows[shard - 1]
            rows[7] = {**row, "key": rows[7]["key"], "dfn_score": 0.97}
            images[7] = img
            summary.duplicates.append([f"{shard:05d}", rows[7]["key"], row["uid"]])
        _break_samples(shard, rows, images, summary)
        if shard == n_shards - 1 and n_shards > 2:
            rows[9]["dfn_score"] = 0.98
            images[9] = None
            summary.missing.append([f"{shard:05d}", rows[9]["key"]])
        _write_pool_shard(fs, f"{root}/{shard:05d}", rows, images)
        summary.pool_rows += len(rows)


def _write_pool_shard(fs, stem: str, rows: list[dict], images: list[bytes | None]) -> None:
    samples = []
    for row, img in zip(rows, images):
        files = {"txt": row["caption"].encode(), "json": json.dumps(row).encode()}
        if img is not None:
            files["jpg"] = img
        samples.append((row["key"], files))
    storage.write_bytes(fs, f"{stem}.tar", wds_bytes(samples))
    table = pa.Table.from_pylist(
        rows,
        schema=pa.schema(
            [
                ("uid", pa.string()),
                ("key", pa.string()),
                ("caption", pa.string()),
                ("width", pa.int32()),
                ("height", pa.int32()),
                ("dfn_score", pa.float32()),
                ("clip_b32_score", pa.float32()),
            ]
        ),
    )
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    storage.write_bytes(fs, f"{stem}.parquet", buf.getvalue().to_pybytes())


def _write_curated(fs, root: str, counts: dict[str, int], size: int, rng, summary: DemoSummary) -> None:
    for split, n in counts.items():
        labels = np.arange(n) % len(CLASS_NAMES)
        rng.shuffle(labels)
        images = [_jpeg(_scene(rng, size, size, int(c)), quality=90) for c in labels]
        table = pa.table(
            {
                "image": pa.array(images, pa.binary()),
                "label": pa.array(labels, pa.int64()),
                "label_name": [CLASS_NAMES[c] for c in labels],
                "split": [split] * n,
            }
        )
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf, row_group_size=128)
        storage.write_bytes(fs, f"{root}/demo_{split}-00000-of-00001.parquet", buf.getvalue().to_pybytes())
        summary.curated_rows[split] = n


def write_demo(
    out: str,
    *,
    shards: int = 4,
    per_shard: int = 200,
    curated_train: int = 400,
    curated_test: int = 100,
    size: int = 64,
    seed: int = 0,
    s3: S3Config | None = None,
    curated_size: int | None = None,
) -> DemoSummary:
    """Write `OUT/pool`, `OUT/curated`, `OUT/data.yaml` (a ready `data:` section) and `OUT/demo.json`.

    Pool images are `size` px scaled by 0.75-1.5 per side; curated images are `curated_size` px square
    (default half of `size`, at least 16)."""
    fs, root = storage.filesystem(out, s3)
    base = out.rstrip("/")
    summary = DemoSummary(pool_uri=f"{base}/pool", curated_uri=f"{base}/curated")
    rng = np.random.default_rng(seed)
    _write_pool(fs, f"{root}/pool", shards, per_shard, size, rng, summary)
    _write_curated(
        fs,
        f"{root}/curated",
        {"train": curated_train, "test": curated_test},
        curated_size or max(size // 2, 16),
        rng,
        summary,
    )
    storage.write_bytes(fs, f"{root}/demo.json", json.dumps(asdict(summary), indent=2).encode())
    storage.write_bytes(fs, f"{root}/data.yaml", demo_yaml(summary, s3).encode())
    return summary


def demo_yaml(summary: DemoSummary, s3: S3Config | None) -> str:
    lines = [
        "# written by `aimctl data demo`; paste under an experiment's top level",
        "data:",
        f"  pool: {{uri: {summary.pool_uri}, dedup: true}}",
        f"  curated: {{uri: {summary.curated_uri}}}",
        "  max_bad_fraction: 0.05  # the demo breaks ~1 in 30 selected pool images on purpose",
    ]
    if s3 is not None and s3.endpoint_url:
        lines.append(f"  s3: {{endpoint_url: {s3.endpoint_url}, region: {s3.region or 'us-east-1'}}}")
    return "\n".join(lines) + "\n"
