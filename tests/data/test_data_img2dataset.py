"""A pool as the real img2dataset writes it: downloaded from a local HTTP server with dead links and a
non-image, built with `aimctl data build`, then a few training steps on it.

img2dataset runs from its own venv (`scripts/img2dataset_venv.py`, created on first use under .cache/).
"""

from __future__ import annotations

import functools
import http.server
import io
import json
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import experiment

pytestmark = pytest.mark.ray
N_URLS, PER_SHARD = 50, 10
DEAD = {7, 13, 21, 28, 35} | set(range(40, 50))  # 404; the last shard has no successful row at all
NOT_IMAGE = {4, 17}  # served with 200 but not decodable: img2dataset's failed_to_resize


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _serve(root: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def _url_list(srv: Path, base: str, out: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = []
    for i in range(N_URLS):
        if i in NOT_IMAGE:
            (srv / f"{i}.jpg").write_bytes(b"<html>not an image</html>")
        elif i not in DEAD:
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(buf, "JPEG")
            (srv / f"{i}.jpg").write_bytes(buf.getvalue())
        uid = f"{i:032x}"
        rows.append({"url": f"{base}/{i}.jpg", "caption": f"photo {i}", "uid": uid, "dfn_score": float(rng.random())})
    pq.write_table(pa.Table.from_pylist(rows), out)


@pytest.fixture(scope="module")
def i2d_pool(tmp_path_factory) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    from img2dataset_venv import img2dataset_venv

    exe = img2dataset_venv()
    root = tmp_path_factory.mktemp("i2d")
    (root / "srv").mkdir()
    server, base = _serve(root / "srv")
    try:
        _url_list(root / "srv", base, root / "urls.parquet")
        args = {
            "url_list": root / "urls.parquet",
            "input_format": "parquet",
            "url_col": "url",
            "caption_col": "caption",
            "save_additional_columns": '["uid","dfn_score"]',
            "output_format": "webdataset",
            "output_folder": root / "pool",
            "processes_count": 1,
            "thread_count": 4,
            "image_size": 32,
            "number_sample_per_shard": PER_SHARD,
            "distributor": "multiprocessing",
            "enable_wandb": False,
            "retries": 0,
            "timeout": 5,
        }
        cmd = [str(exe)] + [f"--{k}={v}" for k, v in args.items()]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=root)
        assert r.returncode == 0, r.stderr[-2000:]
    finally:
        server.shutdown()
    return root / "pool"


def _build(tmp_path: Path, pool: Path, curated: str, name: str):
    from typer.testing import CliRunner

    from pipelines.cli import app

    exp = tmp_path / f"{name}.yaml"
    data = {"pool": {"uri": str(pool), "top_fraction": 0.5}, "curated": {"uri": curated}, "mix": {"window": 4}}
    exp.write_text(yaml.safe_dump({"seed": 0, "data": data}))
    return CliRunner().invoke(app, ["data", "build", str(exp), "--manifest", str(tmp_path / f"{name}.json")])


def test_img2dataset_pool_builds_and_trains(ray_local, i2d_pool, demo_data, tmp_path):
    status = pa.concat_tables([pq.read_table(p) for p in sorted(i2d_pool.glob("*.parquet"))])
    assert status.num_rows == N_URLS  # img2dataset keeps a metadata row for every URL it tried
    assert status["status"].to_pylist().count("success") == N_URLS - len(DEAD) - len(NOT_IMAGE)

    r = _build(tmp_path, i2d_pool, demo_data.curated_uri, "ok")
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "ok.json").read_text())
    pool = m["pool"]
    assert pool["rows_seen"] == N_URLS and pool["not_downloaded"] == len(DEAD) + len(NOT_IMAGE)
    assert pool["not_downloaded_by_reason"] == {"failed_to_download": len(DEAD), "failed_to_resize": len(NOT_IMAGE)}
    assert pool["not_downloaded_by_shard"]["00004"] == {"failed_to_download": PER_SHARD}
    assert pool["rows_kept"] == 17  # ceil-ish half of the 33 downloaded rows: np.quantile over them
    assert m["skipped"]["missing_image"] == 0 and m["skipped"]["corrupt_image"] == 0
    assert m["mix"]["pool_samples"] == pool["rows_kept"]

    # a row that claims success but whose image is not in the tar is still a missing image (bad)
    broken = tmp_path / "broken"
    broken.mkdir()
    for p in i2d_pool.glob("*.*"):
        (broken / p.name).write_bytes(p.read_bytes())
    _drop_every_image(broken / "00000.tar")
    r = _build(tmp_path, broken, demo_data.curated_uri, "broken")
    assert r.exit_code == 1 and "pool shard '00000'" in r.output and "missing_image" in r.output, r.output

    _train_a_few_steps(i2d_pool, demo_data, tmp_path)


def _drop_every_image(tar_path: Path) -> None:
    with tarfile.open(tar_path) as src:
        members = [(m, src.extractfile(m).read()) for m in src.getmembers() if not m.name.endswith(".jpg")]
    with tarfile.open(tar_path, "w") as dst:
        for m, data in members:
            dst.addfile(m, io.BytesIO(data))


def _train_a_few_steps(pool: Path, demo_data, tmp_path: Path) -> None:
    from pipelines import tracking
    from pipelines.config import parse_experiment
    from pipelines.train.driver import pretrain

    cfg = parse_experiment(
        experiment(
            demo_data,
            tmp_path,
            "i2d",
            data={"pool": {"uri": str(pool), "top_fraction": 0.5}, "max_bad_fraction": 0.0},
            schedule={"steps": 3, "warmup_fraction": 0.1},
            scaling={"num_workers": 0, "shuffle_buffer": 16},
            storage={"path": str(tmp_path / "runs"), "checkpoint_every": 3},
        )
    )
    res = pretrain(cfg, show_progress=False)
    assert res.step == 3 and not res.skipped
    run = tracking.client(tracking.resolve_tracking_uri(cfg.tracking.uri)).get_run(res.run_id)
    assert run.data.metrics["data/pool_not_downloaded"] == len(DEAD) + len(NOT_IMAGE)
    assert run.data.metrics["data/pool_not_downloaded_failed_to_resize"] == len(NOT_IMAGE)
    assert np.isfinite(run.data.metrics["train/loss"])
