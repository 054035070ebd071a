"""Mixing maths: which output slot takes a pool sample, and which curated row fills the others.

No Ray here: the plan is a pure function of counts, `seed` and `epoch`, so each read task can compute
its own part of the global mixed sequence.

Slot pattern (pool probability p, window K): the number of pool slots before window w is
`floor(w*K*p + u)` with a random offset u in [0, 1) (a low-discrepancy Bernoulli sequence), and inside
each window the pool slots are placed by a seeded random permutation. Every slot is a pool slot with
probability p, and the pool count of any prefix of n slots is within K + 1 of n*p (so over 10,000
samples the realised fraction is within ±0.0033 of p for the default K=32).

Curated stream: an endless sequence of passes ("cycles") over the curated set; each cycle visits the
chunks (Parquet row groups / tars) in a seeded order and the rows of each chunk in a seeded order.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

__all__ = ["rng", "stable_id", "SlotPattern", "CuratedStream", "plan_ranges", "aug_seeds", "slot_hash"]

_OFFSET, _WINDOW, _SHARDS, _ROWS, _CHUNKS, _CROWS = 1, 2, 3, 4, 5, 6


def rng(*keys: int) -> np.random.Generator:
    """A generator keyed by non-negative ints (seed, epoch, stream tag, ...)."""
    return np.random.default_rng(np.random.SeedSequence([int(k) % 2**63 for k in keys]))


def stable_id(name: str) -> int:
    """A process-independent 63-bit id for a name (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little") % 2**63


def shard_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return rng(seed, epoch, _SHARDS).permutation(n)


def row_order(n: int, seed: int, epoch: int, shard: str) -> np.ndarray:
    return rng(seed, epoch, _ROWS, stable_id(shard)).permutation(n)


@dataclass(frozen=True)
class SlotPattern:
    p: float
    seed: int
    epoch: int
    window: int = 32

    @cached_property
    def _u(self) -> float:
        return float(rng(self.seed, self.epoch, _OFFSET).random())

    def base_count(self, w: int) -> int:
        """Pool slots in windows [0, w)."""
        return int(np.floor(w * self.window * self.p + self._u))

    def window_mask(self, w: int) -> np.ndarray:
        k = self.window
        n_pool = self.base_count(w + 1) - self.base_count(w)
        mask = np.zeros(k, dtype=bool)
        mask[rng(self.seed, self.epoch, _WINDOW, w).permutation(k)[:n_pool]] = True
        return mask

    def mask(self, start: int, stop: int) -> np.ndarray:
        """`is_pool[j - start]` for slots j in [start, stop)."""
        if stop <= start:
            return np.zeros(0, dtype=bool)
        k = self.window
        w0, w1 = start // k, (stop - 1) // k
        full = np.concatenate([self.window_mask(w) for w in range(w0, w1 + 1)])
        return full[start - w0 * k : stop - w0 * k]

    def pool_before(self, j: int) -> int:
        """Pool slots in [0, j)."""
        w, r = divmod(j, self.window)
        return self.base_count(w) + (int(self.window_mask(w)[:r].sum()) if r else 0)

    def slot_of_pool(self, i: int) -> int:
        """The slot holding the i-th (0-based) pool sample."""
        k = self.window
        w = max(int((i - self._u) // (k * self.p)) - 1, 0)
        while self.base_count(w + 1) <= i:
            w += 1
        while w > 0 and self.base_count(w) > i:
            w -= 1
        positions = np.flatnonzero(self.window_mask(w))
        return w * k + int(positions[i - self.base_count(w)])


@dataclass(frozen=True)
class TaskRange:
    """A read task's share of the epoch: slots [slot_start, slot_stop) hold pool samples
    [pool_start, pool_start + n_pool) and curated stream positions [cur_start, cur_stop)."""

    slot_start: int
    slot_stop: int
    pool_start: int
    n_pool: int
    cur_start: int
    cur_stop: int


def plan_ranges(pool_counts: list[int], pattern: SlotPattern) -> list[TaskRange]:
    """Split the epoch's slots between read tasks, one per pool shard (in the epoch's shard order).

    Task t ends right after its last pool slot; curated slots in between go to the next task. O(#shards).
    """
    total = int(sum(pool_counts))
    if total == 0:
        return []
    out, cum, start = [], 0, 0
    for n in pool_counts:
        if n == 0:
            out.append(TaskRange(start, start, cum, 0, start - cum, start - cum))
            continue
        stop = pattern.slot_of_pool(cum + n - 1) + 1
        out.append(TaskRange(start, stop, cum, n, start - cum, stop - cum - n))
        cum, start = cum + n, stop
    return out


@dataclass(frozen=True)
class CuratedStream:
    chunk_rows: tuple[int, ...]
    seed: int
    epoch: int
    _cache: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    @cached_property
    def size(self) -> int:
        return int(sum(self.chunk_rows))

    def cycle(self, c: int) -> tuple[np.ndarray, np.ndarray]:
        """(chunk order, start offset of each chunk in that order) for cycle c."""
        if c not in self._cache:
            order = rng(self.seed, self.epoch, _CHUNKS, c).permutation(len(self.chunk_rows))
            sizes = np.asarray(self.chunk_rows, dtype=np.int64)[order]
            self._cache.clear()
            self._cache[c] = (order, np.concatenate([[0], np.cumsum(sizes)]))
        return self._cache[c]

    def rows_in_chunk(self, c: int, chunk: int) -> np.ndarray:
        return rng(self.seed, self.epoch, _CROWS, c, chunk).permutation(self.chunk_rows[chunk])

    def locate(self, a: int, b: int) -> list[tuple[int, int, np.ndarray]]:
        """Stream positions [a, b) as (cycle, chunk, rows within the chunk) pieces, in stream order."""
        out: list[tuple[int, int, np.ndarray]] = []
        n = self.size
        if b <= a or n == 0:
            return out
        for c in range(a // n, (b - 1) // n + 1):
            lo, hi = max(a - c * n, 0), min(b - c * n, n)
            order, starts = self.cycle(c)
            first = int(np.searchsorted(starts, lo, side="right")) - 1
            for i in range(first, len(order)):
                s, e = int(starts[i]), int(starts[i + 1])
                if s >= hi:
                    break
                if e <= lo or e == s:
                    continue
                rows = self.rows_in_chunk(c, int(order[i]))[max(lo - s, 0) : min(hi, e) - s]
                out.append((c, int(order[i]), rows))
        return out

    def draws_per_chunk(self, n_draws: int) -> np.ndarray:
        """How many of the first `n_draws` stream positions fall in each chunk."""
        counts = np.zeros(len(self.chunk_rows), dtype=np.int64)
        if self.size == 0:
            return counts
        full, rest = divmod(n_draws, self.size)
        counts += full * np.asarray(self.chunk_rows, dtype=np.int64)
        order, starts = self.cycle(full)
        taken = np.clip(rest - starts[:-1], 0, np.asarray(self.chunk_rows, dtype=np.int64)[order])
        np.add.at(counts, order, taken)
        return counts


def slot_hash(key: str, slots: np.ndarray) -> np.ndarray:
    """A 63-bit hash per sample id (splitmix64 of the id plus a hash of `key`), the same in every process."""
    with np.errstate(over="ignore"):
        x = np.asarray(slots, dtype=np.uint64) + np.uint64(int(stable_id(key)))
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(1)).astype(np.int64)


def aug_seeds(seed: int, epoch: int, slots: np.ndarray) -> np.ndarray:
    """One 63-bit augmentation seed per slot (splitmix64 of seed, epoch, slot): same crop wherever it runs."""
    return slot_hash(f"{seed}/{epoch}", slots)
