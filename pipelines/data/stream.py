"""Each training worker's stream of samples, and its position: exact resume without re-reading the past.

The driver plans the read tasks of every data epoch a run needs (`pipeline.plan_stream`), in one global
order. A *deal* hands them to the workers: worker r of W reads items r, r+W, r+2W, ... of the deal's list,
so its stream is strictly increasing in sample id (`slot`: epoch * 2**40 + position in the epoch's mix).

Shuffling is a pure function of position: a worker's stream is cut into windows of `window` rows and each
window is permuted with a seed of (seed, deal, rank, window index). So the position of every worker is two
numbers: rows consumed since the deal began (`step - origin_step` batches, the same on every rank) and the
id of the last row before its current window (`after`). A resumed worker reads its items from the first row
after `after` (read tasks wholly before it are never submitted; the one that holds it skips rows without
decoding them), rebuilds the current window, and drops the rows of it already consumed: at most one window
of rows is decoded and thrown away per worker.

With the same worker count the resumed stream equals the uninterrupted one. With another count, the rest of
every old worker's stream (from its current window) is dealt again over the new workers: no sample is
skipped, the rows of each old worker's current window that were already consumed (< `window` per old
worker) are seen once more, and the order from there on is a new one. The global batch is unchanged.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numpy as np

from pipelines.data.mix import rng, slot_hash

__all__ = ["Deal", "Position", "WorkerStream", "worker_items", "prefix_lengths", "data_fingerprint"]


@dataclass(frozen=True)
class Deal:
    """How the planned read tasks are shared out, from training step `origin_step` on.

    The list dealt is `items` (explicit (task index, after) pairs: rows of that task with slot > after)
    followed by every task from index `tail_from` on, read whole."""

    origin_step: int = 0
    world: int = 1
    items: tuple[tuple[int, int], ...] = ()
    tail_from: int = 0

    def listing(self, n_tasks: int) -> list[tuple[int, int]]:
        return list(self.items) + [(t, -1) for t in range(self.tail_from, n_tasks)]


@dataclass
class Position:
    """Where every worker is: the deal, and per rank the id of the last row before its current window."""

    deal: Deal = field(default_factory=Deal)
    after: list[int] = field(default_factory=list)  # per rank; -1: the rank's current window is its first

    def to_dict(self) -> dict:
        d = asdict(self)
        d["deal"]["items"] = [list(i) for i in self.deal.items]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Position:
        deal = d["deal"]
        items = tuple((int(t), int(a)) for t, a in deal["items"])
        return cls(
            Deal(int(deal["origin_step"]), int(deal["world"]), items, int(deal["tail_from"])),
            [int(a) for a in d["after"]],
        )

    def resumed(self, world: int, step: int, task_stops: list[int]) -> Position:
        """This position for a run of `world` workers at `step`: itself for the same world, else the rest
        of every old rank's stream dealt again over the new ranks (see the module docstring)."""
        if world == self.deal.world:
            return self
        rest = []
        for r in range(self.deal.world):
            rest += remaining(worker_items(self.deal, r, len(task_stops)), self.after[r], task_stops)
        rest.sort()
        deal = Deal(step, world, tuple(rest), len(task_stops))
        return Position(deal, [-1] * world)


def worker_items(deal: Deal, rank: int, n_tasks: int) -> list[tuple[int, int]]:
    return deal.listing(n_tasks)[rank :: deal.world]


def remaining(items: list[tuple[int, int]], after: int, task_stops: list[int]) -> list[tuple[int, int]]:
    """`items` from the first row with slot > `after` on (`task_stops[t]`: one past task t's last slot id)."""
    return [(t, max(a, after)) for t, a in items if task_stops[t] - 1 > after]


def data_fingerprint(data_section: dict) -> str:
    """A short stable hash of a data section (what a resume must not change)."""
    return hashlib.sha256(json.dumps(data_section, sort_keys=True).encode()).hexdigest()[:16]


def prefix_lengths(seed: int, slots: np.ndarray, num_patches: int) -> np.ndarray:
    """Per-sample prefix length S in {1, ..., K-1}, a function of (seed, sample id) like its crop."""
    return 1 + (slot_hash(f"prefix/{seed}", slots) % (num_patches - 1))


class WorkerStream:
    """One rank's batches from its blocks, window-shuffled, keeping its position as it goes.

    `blocks` yields dicts with `image` (n, 3, S, S) and `slot` (n,) in stream order, from the first row
    after `start_after`; `consumed` rows of the deal were consumed before, so the current window is window
    `consumed // window` and its first `consumed % window` rows (in shuffled order) are dropped. Each image
    is copied once, into its batch (the window only holds an index into the blocks)."""

    def __init__(
        self, blocks: Iterator[dict], window: int, shuffle: bool, key: tuple[int, ...], start_after: int, consumed: int
    ) -> None:
        self.blocks, self.window, self.shuffle, self.key = iter(blocks), window, shuffle, key
        self.w, drop = divmod(consumed, window)
        self.after = start_after  # id of the last row before the current window
        self.discarded = drop  # rows decoded and thrown away to rebuild the current window
        self._pending: tuple[dict, int] | None = None  # a block partly taken into the last window
        self._cur: _Window | None = None
        self._take(drop)

    def _next_block(self) -> tuple[dict, int] | None:
        if self._pending is not None:
            nxt, self._pending = self._pending, None
            return nxt
        for block in self.blocks:
            if len(block["slot"]):
                return block, 0
        return None

    def _fill(self) -> _Window | None:
        """The next window (`self.w`) from the stream; None at its end."""
        pieces, need = [], self.window
        while need > 0 and (nxt := self._next_block()) is not None:
            block, off = nxt
            n = min(need, len(block["slot"]) - off)
            pieces.append((block["image"], np.arange(off, off + n), block["slot"][off : off + n]))
            need -= n
            if off + n < len(block["slot"]):
                self._pending = (block, off + n)
        if not pieces:
            return None
        n = self.window - need
        order = rng(*self.key, self.w).permutation(n) if self.shuffle else np.arange(n)
        return _Window(pieces, order)

    def _take(self, n: int) -> list[tuple[_Window, np.ndarray]]:
        """The next `n` rows (fewer at the end of the stream) as (window, positions in it) parts."""
        out = []
        while n > 0:
            if self._cur is None:
                self._cur = self._fill()
                if self._cur is None:
                    break
            k = min(n, len(self._cur.order) - self._cur.taken)
            out.append((self._cur, self._cur.order[self._cur.taken : self._cur.taken + k]))
            self._cur.taken += k
            n -= k
            if self._cur.taken == len(self._cur.order):
                self.after, self.w, self._cur = self._cur.last, self.w + 1, None
        return out

    def batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(images (B, 3, S, S), slots (B,)) until the stream cannot fill a whole batch."""
        while True:
            parts = self._take(batch_size)
            if sum(len(p) for _, p in parts) < batch_size:
                return
            gathered = [win.gather(pos) for win, pos in parts]
            if len(gathered) == 1:
                yield gathered[0]
            else:
                yield np.concatenate([g[0] for g in gathered]), np.concatenate([g[1] for g in gathered])


class _Window:
    """`window` rows of a stream as pieces of blocks, and the order they are handed out in."""

    def __init__(self, pieces: list[tuple[np.ndarray, np.ndarray, np.ndarray]], order: np.ndarray) -> None:
        self.images = [p[0] for p in pieces]
        self.rows = np.concatenate([p[1] for p in pieces])  # row in its block, per window position
        self.piece = np.concatenate([np.full(len(p[1]), i) for i, p in enumerate(pieces)])
        self.slots = np.concatenate([p[2] for p in pieces])
        self.last = int(self.slots[-1])
        self.order, self.taken = order, 0

    def gather(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(images, slots) at window positions: a view when they are consecutive rows of one block."""
        pieces, rows = self.piece[positions], self.rows[positions]
        if (pieces == pieces[0]).all() and (np.diff(rows) == 1).all():
            return self.images[pieces[0]][rows[0] : rows[-1] + 1], self.slots[positions]
        first = self.images[pieces[0]]
        out = np.empty((len(positions), *first.shape[1:]), dtype=first.dtype)
        for i in np.unique(pieces):
            sel = pieces == i
            out[sel] = self.images[i][rows[sel]]
        return out, self.slots[positions]
