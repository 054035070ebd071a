"""Decode + augment as Ray Data UDFs, and the per-shard bad-sample accounting (`QualityTracker`)."""

from __future__ import annotations

import numpy as np

from pipelines.data.augment import augment_image
from pipelines.data.config import AugmentConfig
from pipelines.data.errors import BadSamplesError

__all__ = ["QualityTracker", "report_bad", "decode_batch", "DecodeActor"]


class QualityTracker:
    """Counts skipped samples per shard and reason (unique slots, so re-reading an epoch does not
    double-count) and says when a shard passes `max_bad_fraction` of the samples it feeds this epoch."""

    def __init__(self, expected: dict[str, int], max_bad_fraction: float):
        self.expected, self.max_bad = expected, max_bad_fraction
        self.bad: dict[str, dict[str, set[int]]] = {}

    def report(self, shard: str, reason: str, slots: list[int]) -> str | None:
        self.bad.setdefault(shard, {}).setdefault(reason, set()).update(slots)
        n_bad = sum(len(s) for s in self.bad[shard].values())
        total = max(self.expected.get(shard, n_bad), 1)
        if n_bad > self.max_bad * total:
            kind, _, name = shard.partition(":")
            what = "pool shard" if kind == "pool" else "curated file"
            reasons = ", ".join(f"{len(s)} {r}" for r, s in sorted(self.bad[shard].items()))
            return (f"{what} {name!r}: {n_bad} of {total} samples are unusable ({reasons}), more than "
                    f"data.max_bad_fraction={self.max_bad}")
        return None

    def summary(self) -> dict:
        by_reason: dict[str, int] = {}
        for reasons in self.bad.values():
            for r, s in reasons.items():
                by_reason[r] = by_reason.get(r, 0) + len(s)
        by_shard = {sh: {r: len(s) for r, s in rs.items()} for sh, rs in self.bad.items()}
        return {"by_reason": by_reason, "by_shard": by_shard}


def decode_batch(batch: dict[str, np.ndarray], *, img_size: int, aug: AugmentConfig, tracker,
                 keep_source: bool = False) -> dict[str, np.ndarray]:
    """Ray Data UDF: encoded rows -> {"image": (B, 3, S, S) float32}; undecodable rows are skipped."""
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
    result = {"image": images}
    if keep_source:
        result["is_pool"] = np.asarray(batch["is_pool"])[np.asarray(ok, dtype=bool)]
    return result


class DecodeActor:
    def __init__(self, **kwargs):
        self.kwargs = kwargs

    def __call__(self, batch):
        return decode_batch(batch, **self.kwargs)


def report_bad(tracker, bad: dict[str, list[int]], reason: str) -> None:
    """Tell the tracker about bad samples (by shard and slot); raise once a shard is past the limit."""
    import ray

    for shard, slots in bad.items():
        message = ray.get(tracker.report.remote(shard, reason, slots))
        if message:
            raise BadSamplesError(message)
