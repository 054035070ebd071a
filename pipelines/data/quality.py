"""Bad-sample accounting: one small actor per driver process counts skipped samples for every dataset it builds.

Read/decode tasks report corrupt or missing images (`report_bad`) by shard and slot; a shard past
`data.max_bad_fraction` of the samples it feeds stops the run with an error naming it. The actor is
created once per Ray job and reused by every later `build_epoch` in the same process (each build gets its
own ledger): starting a fresh actor process per dataset cost ~0.6 CPU-s per build, a fifth of a 2-core
machine during a short data pass (measured with benchmarks/data_ingest.py).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from pipelines.data.errors import BadSamplesError

__all__ = ["QualityTracker", "Quality", "new_quality", "report_bad"]


class QualityTracker:
    """Ledgers of skipped samples, one per build: unique slots per (shard, reason), so re-reading an epoch
    does not double-count."""

    def __init__(self):
        self.bad: dict[int, dict[str, dict[str, set[int]]]] = {}

    def report(self, build: int, shard: str, reason: str, slots: list[int], expected: int,
               max_bad: float) -> str | None:
        """Record `slots`; a message if the shard is now past `max_bad` of its `expected` samples."""
        ledger = self.bad.setdefault(build, {}).setdefault(shard, {})
        ledger.setdefault(reason, set()).update(slots)
        n_bad = sum(len(s) for s in ledger.values())
        total = max(expected or n_bad, 1)
        if n_bad > max_bad * total:
            kind, _, name = shard.partition(":")
            what = "pool shard" if kind == "pool" else "curated file"
            reasons = ", ".join(f"{len(s)} {r}" for r, s in sorted(ledger.items()))
            return (f"{what} {name!r}: {n_bad} of {total} samples are unusable ({reasons}), more than "
                    f"data.max_bad_fraction={max_bad}")
        return None

    def summary(self, build: int) -> dict:
        by_reason: dict[str, int] = {}
        shards = self.bad.get(build, {})
        for reasons in shards.values():
            for r, s in reasons.items():
                by_reason[r] = by_reason.get(r, 0) + len(s)
        by_shard = {sh: {r: len(s) for r, s in rs.items()} for sh, rs in shards.items()}
        return {"by_reason": by_reason, "by_shard": by_shard}


@dataclass
class Quality:
    """What a read/decode task needs to report into one build's ledger (picklable)."""

    actor: object  # QualityTracker actor handle
    build: int
    expected: dict[str, int]  # samples each shard/file feeds over the build's epochs
    max_bad: float

    def summary(self) -> dict:
        """{"by_reason": {reason: n}, "by_shard": {shard: {reason: n}}} of what was skipped so far."""
        import ray

        return ray.get(self.actor.summary.remote(self.build))


_ACTOR: dict[str, object] = {}  # Ray job id -> this process's tracker actor
_BUILDS = itertools.count()


def new_quality(expected: dict[str, int], max_bad_fraction: float) -> Quality:
    """A fresh ledger on this process's tracker actor (created on first use in the current Ray job)."""
    import ray

    job = ray.get_runtime_context().get_job_id()
    if job in _ACTOR and not _alive(_ACTOR[job]):
        del _ACTOR[job]
    if job not in _ACTOR:
        _ACTOR.clear()  # a handle from an earlier ray.init is dead
        _ACTOR[job] = ray.remote(num_cpus=0)(QualityTracker).remote()
    return Quality(_ACTOR[job], next(_BUILDS), expected, max_bad_fraction)


def _alive(actor) -> bool:
    """Whether a tracker from an earlier build still answers (one round trip; it has long started)."""
    import ray

    try:
        ray.get(actor.summary.remote(-1), timeout=30)
        return True
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        return False


def report_bad(quality: Quality, bad: dict[str, list[int]], reason: str) -> None:
    """Tell the tracker about bad samples (by shard and slot); raise once a shard is past the limit."""
    import ray

    for shard, slots in bad.items():
        message = ray.get(quality.actor.report.remote(quality.build, shard, reason, slots,
                                                      quality.expected.get(shard, 0), quality.max_bad))
        if message:
            raise BadSamplesError(message)
