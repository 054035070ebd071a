"""Data ingest for AIM pre-training: DFN-style pool + curated set -> mixed, augmented batches on Ray Data.

Public API (Ray is imported lazily, inside the functions):
- `DataConfig` (the experiment's `data:` section), `load_data_section`
- `build_train_dataset(cfg, img_size, seed, epoch=0) -> ray.data.Dataset` (column `image`)
- `iter_torch_batches(ds_or_shard, batch_size, drop_last=True)` -> (B, 3, H, W) float32 tensors
- `load_labelled(uri_or_cfg, split, img_size, limit=None)` -> (images, labels) for probes
"""

from __future__ import annotations

from pipelines.data.config import DataConfig, load_data_section

__all__ = ["DataConfig", "load_data_section", "build_train_dataset", "iter_torch_batches", "load_labelled"]


def __getattr__(name: str):
    if name in ("build_train_dataset", "iter_torch_batches"):
        from pipelines.data import pipeline

        return getattr(pipeline, name)
    if name == "load_labelled":
        from pipelines.data.labelled import load_labelled

        return load_labelled
    raise AttributeError(f"module 'pipelines.data' has no attribute {name!r}")
