"""Bad-sample accounting: a small actor counts the skipped samples of one dataset build.

Read/decode tasks report corrupt or missing images (`report_bad`) by shard and slot; a shard past
`data.max_bad_fraction` of the samples it feeds stops the run with an error naming it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.data.errors import BadSamplesError

__all__ = ["QualityTracker", "Quality", "new_quality", "report_bad", "REASONS"]

REASONS = ("corrupt_image", "missing_image")  # why a planned sample is skipped at read time


class QualityTracker:
    """Counts skipped samples per shard and reason (unique slots, so re-reading an epoch does not
    double-count) and says when a shard passes `max_bad_fraction` of the samples it feeds the build."""

    def __init__(self, expected: dict[str, int], max_bad_fraction: float):
        self.expected, self.max_bad = expected, max_bad_fraction
        self.bad: dict[str, dict[str, set[int]]] = {}

    def report(self, shard: str, reason: str, slots: list[int]) -> str | None:
        """Record `slots`; a message if the shard is now past `max_bad_fraction` of its expected samples."""
        ledger = self.bad.setdefault(shard, {})
        ledger.setdefault(reason, set()).update(slots)
        n_bad = sum(len(s) for s in ledger.values())
        total = max(self.expected.get(shard, n_bad), 1)
        if n_bad > self.max_bad * total:
            kind, _, name = shard.partition(":")
            what = "pool shard" if kind == "pool" else "curated file"
            reasons = ", ".join(f"{len(s)} {r}" for r, s in sorted(ledger.items()))
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


@dataclass
class Quality:
    """One build's tracker (picklable: read/decode tasks report through it)."""

    actor: object  # QualityTracker actor handle
    expected: dict[str, int]  # samples each shard/file feeds over the build's epochs

    def summary(self) -> dict:
        """{"by_reason": {reason: n}, "by_shard": {shard: {reason: n}}} of what was skipped so far."""
        import ray

        return ray.get(self.actor.summary.remote())


def new_quality(expected: dict[str, int], max_bad_fraction: float) -> Quality:
    """A tracker actor for one build. (One actor per process shared by its builds saved ~0.6 CPU-s per build,
    but was reverted in session 4 after a clean-clone CI run saw builds' counts mix; see
    docs/results/data_ingest.md.)"""
    import ray

    return Quality(ray.remote(num_cpus=0)(QualityTracker).remote(expected, max_bad_fraction), expected)


def report_bad(quality: Quality, bad: dict[str, list[int]], reason: str) -> None:
    """Tell the tracker about bad samples (by shard and slot); raise once a shard is past the limit."""
    import ray

    for shard, slots in bad.items():
        message = ray.get(quality.actor.report.remote(shard, reason, slots))
        if message:
            raise BadSamplesError(message)
