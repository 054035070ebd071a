"""Bad data through `aimctl data build` (the real CLI code, typer's runner, on the session's local Ray): each
broken input is skipped and counted per shard while the shard stays within `data.max_bad_fraction`, or
refused with exit 1 and one line that names the shard (file). What tests/data already proves is not repeated
here (see docs/guarantees.md): a truncated / non-image JPEG and a metadata row without its image counted
(test_data_pipeline.py::test_build_on_s3_writes_manifest), too many of them refused naming the shard
(::test_too_many_corrupt_images_stop_the_run), a shard listed but gone at read time (::test_shard_missing_at_
read_time_is_named) and a tar without its Parquet (test_data_formats.py::test_pool_listing_names_a_missing_shard).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import yaml

from pipelines.data.formats import iter_wds, wds_bytes

pytestmark = [pytest.mark.reliability, pytest.mark.ray]

SHARD = "00001"


def _truncate(fraction: float):
    def f(pool: Path) -> None:
        tar = pool / f"{SHARD}.tar"
        data = tar.read_bytes()
        tar.write_bytes(data[: int(len(data) * fraction)])

    return f


def _zero(name: str):
    return lambda pool: (pool / name).write_bytes(b"")


def _zero_byte_image(pool: Path) -> None:
    """The best-scored intact sample of the shard (surely selected) gets a zero-byte JPEG."""
    broken = {key for _, key, _ in json.loads((pool.parent / "demo.json").read_text())["corrupt"]}
    rows = [r for r in pq.read_table(pool / f"{SHARD}.parquet").to_pylist() if r["key"] not in broken]
    best = max(rows, key=lambda r: r["dfn_score"])["key"]
    samples = [
        (k, {**f, "jpg": b""} if k == best else f)
        for k, f in iter_wds(pafs.LocalFileSystem(), str(pool / f"{SHARD}.tar"))
    ]
    (pool / f"{SHARD}.tar").write_bytes(wds_bytes(samples))


def _drop_column(col: str):
    def f(pool: Path) -> None:
        path = pool / f"{SHARD}.parquet"
        pq.write_table(pq.read_table(path).drop_columns([col]), path)

    return f


# (id, how to break the pool, expected exit code, text the line / manifest check needs)
CASES = [
    ("tar-cut-at-the-end", _truncate(0.97), 0, "missing_image"),
    ("tar-cut-in-half", _truncate(0.5), 1, f"pool shard '{SHARD}':"),
    ("zero-byte-tar", _zero(f"{SHARD}.tar"), 1, f"{SHARD}.tar: not a readable tar (empty file)"),
    ("zero-byte-parquet", _zero(f"{SHARD}.parquet"), 1, f"{SHARD}.parquet: not a readable Parquet file"),
    ("zero-byte-image", _zero_byte_image, 0, "corrupt_image"),
    ("no-score-column", _drop_column("dfn_score"), 1, f"{SHARD}.parquet: no column 'dfn_score'"),
    ("no-key-column", _drop_column("key"), 1, f"{SHARD}.parquet: no column 'key'"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_data_counted_or_refused_naming_the_shard(ray_local, demo_data, tmp_path, case):
    from typer.testing import CliRunner

    from pipelines.cli import app

    _, breaks, code, text = case
    root = tmp_path / "demo"
    shutil.copytree(Path(demo_data.pool_uri).parent, root)
    breaks(root / "pool")
    exp = {
        "seed": 0,
        "data": {
            "pool": {"uri": str(root / "pool"), "top_fraction": 0.5},
            "curated": {"uri": str(root / "curated")},
            "max_bad_fraction": 0.2,
            "decode": {"num_cpus": 0.25, "concurrency": 1},
        },
    }
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(exp))
    r = CliRunner().invoke(app, ["data", "build", str(tmp_path / "exp.yaml"), "--img-size", "16"])
    assert r.exit_code == code, (r.exit_code, r.stderr[-2000:], r.exception)
    assert isinstance(r.exception, (SystemExit, type(None))), "the CLI let an exception (a traceback) through"
    if code == 0:  # skipped and counted, against the shard
        m = json.loads(r.stdout)
        assert m["skipped_by_shard"][f"pool:{SHARD}"].get(text, 0) >= 1, m["skipped_by_shard"]
        baseline = 1 if text == "corrupt_image" else 0  # the demo already breaks one image of this shard
        assert m["skipped_by_shard"][f"pool:{SHARD}"][text] > baseline
    else:  # refused, one line naming the shard
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert lines and lines[-1].startswith("error: ") and text in lines[-1], lines[-1:]
        if "pool shard" in text:
            assert "max_bad_fraction=0.2" in lines[-1]
