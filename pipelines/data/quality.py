"""Bad-sample accounting: one small actor per process counts the skipped samples of every dataset it builds.

Read/decode tasks report corrupt or missing images (`report_bad`) by shard and slot into their build's
ledger; a shard past `data.max_bad_fraction` of the samples it feeds stops the run with an error naming it.
The actor is started once per process and Ray job and shared by every later `build_epoch` there (each
build has its own ledger, keyed by a random id): an actor per dataset started a fresh worker process
each time, ~0.6 CPU-s per build, a fifth of a 2-core machine during a short data pass or sweep trial.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from pipelines.data.errors import BadSamplesError

__all__ = ["QualityTracker", "Quality", "new_quality", "report_bad", "REASONS"]

REASONS = ("corrupt_image", "missing_image")  # why a planned sample is skipped at read time


class QualityTracker:
    """Ledgers of skipped samples, one per build: unique slots per (shard, reason), so re-reading an epoch
    does not double-count."""

    def __init__(self):
        self.bad: dict[str, dict[str, dict[str, set[int]]]] = {}

    def report(
        self, build: str, shard: str, reason: str, slots: list[int], expected: int, max_bad: float
    ) -> str | None:
        """Record `slots` in `build`'s ledger; a message if the shard is now past `max_bad` of `expected`."""
        ledger = self.bad.setdefault(build, {}).setdefault(shard, {})
        ledger.setdefault(reason, set()).update(slots)
        n_bad = sum(len(s) for s in ledger.values())
        total = max(expected or n_bad, 1)
        if n_bad > max_bad * total:
            kind, _, name = shard.partition(":")
            what = "pool shard" if kind == "pool" else "curated file"
            reasons = ", ".join(f"{len(s)} {r}" for r, s in sorted(ledger.items()))
            return (
                f"{what} {name!r}: {n_bad} of {total} samples are unusable ({reasons}), more than "
                f"data.max_bad_fraction={max_bad}"
            )
        return None

    def summary(self, build: str) -> dict:
        by_reason: dict[str, int] = {}
        shards = self.bad.get(build, {})
        for reasons in shards.values():
            for r, s in reasons.items():
                by_reason[r] = by_reason.get(r, 0) + len(s)
        by_shard = {sh: {r: len(s) for r, s in rs.items()} for sh, rs in shards.items()}
        return {"by_reason": by_reason, "by_shard": by_shard}

    def ping(self) -> bool:
        return True


@dataclass
class Quality:
    """What a read/decode task needs to report into one build's ledger (picklable)."""

    actor: object  # QualityTracker actor handle (shared by the builds of one process)
    build: str  # this build's ledger id (random: unique across processes and Ray sessions)
    expected: dict[str, int]  # samples each shard/file feeds over the build's epochs
    max_bad: float

    def summary(self) -> dict:
        """{"by_reason": {reason: n}, "by_shard": {shard: {reason: n}}} of what was skipped so far."""
        import ray

        return ray.get(self.actor.summary.remote(self.build))


_ACTOR: dict[str, object] = {}  # Ray job id -> this process's tracker actor


def new_quality(expected: dict[str, int], max_bad_fraction: float) -> Quality:
    """A fresh ledger on this process's tracker actor (started on first use in the current Ray job, and
    again if it died)."""
    import ray

    job = ray.get_runtime_context().get_job_id()
    actor = _ACTOR.get(job)
    if actor is None or not _alive(actor):
        _ACTOR.clear()  # a handle from an earlier ray.init, or a dead actor
        actor = _ACTOR[job] = ray.remote(num_cpus=0)(QualityTracker).remote()
    return Quality(actor, uuid.uuid4().hex, expected, max_bad_fraction)


def _alive(actor) -> bool:
    """Whether a tracker from an earlier build still answers (one round trip; it has long started)."""
    import ray

    try:
        return ray.get(actor.ping.remote(), timeout=30)
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        return False


def report_bad(quality: Quality, bad: dict[str, list[int]], reason: str) -> None:
    """Tell the tracker about bad samples (by shard and slot); raise once a shard is past the limit."""
    import ray

    for shard, slots in bad.items():
        message = ray.get(
            quality.actor.report.remote(
                quality.build, shard, reason, slots, quality.expected.get(shard, 0), quality.max_bad
            )
        )
        if message:
            raise BadSamplesError(message)
