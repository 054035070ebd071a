"""The probe's splits are settings: ImageNet and Tiny ImageNet call the held-out split `val`, Hugging Face
`validation`; the same file-name / `split`-column rules as the curated set apply."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipelines.config import parse_experiment
from tests.conftest import experiment


def _renamed_curated(demo, out: Path, test_as: str) -> str:
    """The demo's curated Parquet files with the test split's files renamed `*_<test_as>-*`."""
    out.mkdir()
    for f in Path(demo.curated_uri).iterdir():
        shutil.copy(f, out / f.name.replace("_test-", f"_{test_as}-"))
    return str(out)


def test_probe_reads_the_configured_splits(demo_data, tmp_path):
    from pipelines.data.errors import DataError
    from pipelines.probe_runner import probe_checkpoint

    src = _renamed_curated(demo_data, tmp_path / "labelled", "val")
    probe = {"data": src, "test_split": "val", "epochs": 2, "batch_size": 64, "blocks": [0]}
    cfg = parse_experiment(experiment(demo_data, tmp_path, "splits", probe=probe))
    res = probe_checkpoint(cfg, None, random_init=True)
    assert res.num_train == 300 and res.num_test == 200  # the demo's curated train / test sizes
    other = parse_experiment(experiment(demo_data, tmp_path, "splits", probe={**probe, "test_split": "validation"}))
    with pytest.raises(DataError, match="validation"):  # no *_validation-* file, no row of that split
        probe_checkpoint(other, None, random_init=True)
