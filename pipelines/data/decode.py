"""Decode + augment as Ray Data UDFs; undecodable rows are skipped and reported (`quality.report_bad`)."""

from __future__ import annotations

import numpy as np

from pipelines.data.augment import augment_image
from pipelines.data.config import AugmentConfig
from pipelines.data.quality import Quality, report_bad

__all__ = ["decode_batch", "DecodeActor"]


def decode_batch(
    batch: dict[str, np.ndarray], *, img_size: int, aug: AugmentConfig, tracker: Quality, keep_source: bool = False
) -> dict[str, np.ndarray]:
    """Ray Data UDF: encoded rows -> {"image": (B, 3, S, S) float32, "slot": (B,) int64 sample ids};
    undecodable rows are skipped."""
    out, ok, bad = [], [], {}
    for data, seed, shard, slot in zip(batch["image"], batch["aug_seed"], batch["shard"], batch["slot"]):
        try:
            out.append(augment_image(data, img_size, aug, int(seed)))
            ok.append(True)
        except Exception:  # noqa: BLE001 - any decoder failure means a corrupt sample
            bad.setdefault(str(shard), []).append(int(slot))
            ok.append(False)
    if bad:
        report_bad(tracker, bad, "corrupt_image")
    images = np.stack(out) if out else np.zeros((0, 3, img_size, img_size), dtype=np.float32)
    result = {"image": images, "slot": np.asarray(batch["slot"], dtype=np.int64)[np.asarray(ok, dtype=bool)]}
    if keep_source:
        result["is_pool"] = np.asarray(batch["is_pool"])[np.asarray(ok, dtype=bool)]
    return result


class DecodeActor:
    def __init__(self, **kwargs):
        self.kwargs = kwargs

    def __call__(self, batch):
        return decode_batch(batch, **self.kwargs)
