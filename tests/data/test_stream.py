"""Worker streams and positions (pipelines/data/stream.py) without Ray: synthetic tasks with holes (skipped
images), blocks of uneven size; a stream rebuilt from a saved position equals the uninterrupted one."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.data.stream import Deal, Position, WorkerStream, prefix_lengths, remaining, worker_items

# 7 tasks: task t holds slots [100 t, 100 t + 60 + 5 t), every 7th slot missing (a corrupt image)
TASKS = [np.array([s for s in range(100 * t, 100 * t + 60 + 5 * t) if s % 7]) for t in range(7)]
STOPS = [int(t[-1]) + 1 for t in TASKS]


def _blocks(items, block=16):
    """What a rank's Ray Data read yields for `items`: blocks of <= `block` rows per task, slot > after."""
    for t, after in items:
        rows = TASKS[t][TASKS[t] > after]
        for i in range(0, len(rows), block):
            s = rows[i : i + block]
            yield {"image": s.astype(np.float32)[:, None] * np.ones((1, 3)), "slot": s}


def _stream(deal, rank, after, consumed, window=24, shuffle=True):
    items = remaining(worker_items(deal, rank, len(TASKS)), after, STOPS)
    return WorkerStream(_blocks(items), window, shuffle, (0, deal.origin_step, deal.world, rank), after, consumed)


@pytest.mark.parametrize("window,shuffle", [(24, True), (10, True), (8, False)])
@pytest.mark.parametrize("world", [1, 2])
def test_resumed_stream_equals_the_uninterrupted_one(window, shuffle, world):
    deal, b = Deal(0, world), 8
    for rank in range(world):
        full = [s.copy() for _, s in _stream(deal, rank, -1, 0, window, shuffle).batches(b)]
        assert len(full) > 10 and len({int(x) for s in full for x in s}) == sum(len(s) for s in full)
        for k in range(1, len(full)):
            st = _stream(deal, rank, -1, 0, window, shuffle)
            it = st.batches(b)
            for _ in range(k):
                images, slots = next(it)
                assert np.array_equal(images[:, 0], slots)  # images travel with their slots
            after = st.after  # what a checkpoint at step k records for this rank
            again = _stream(deal, rank, after, k * b, window, shuffle)
            assert again.discarded == (k * b) % window < window
            rest = [s for _, s in again.batches(b)]
            assert len(rest) == len(full) - k
            assert all(np.array_equal(x, y) for x, y in zip(rest, full[k:])), k


def test_shuffle_mixes_within_windows_only():
    slots = np.concatenate([s for _, s in _stream(Deal(0, 1), 0, -1, 0, window=24).batches(8)])
    plain = np.concatenate(TASKS)[: len(slots)]
    assert not np.array_equal(slots, plain)
    for w in range(len(slots) // 24):
        assert sorted(slots[24 * w : 24 * w + 24]) == list(plain[24 * w : 24 * w + 24])


def test_another_worker_count_continues_without_losing_a_sample():
    """2 workers for 5 steps, then 3: every sample is seen, and only rows of the old workers' current windows
    (< window each) twice."""
    old, b, window = Deal(0, 2), 8, 24
    seen, afters = [], []
    for rank in range(2):
        st = _stream(old, rank, -1, 0, window)
        it = st.batches(b)
        seen += [int(x) for _ in range(5) for x in next(it)[1]]
        afters.append(st.after)
    pos = Position(old, afters).resumed(3, 5, STOPS)
    assert pos.deal.world == 3 and pos.deal.origin_step == 5 and pos.after == [-1, -1, -1]
    assert Position.from_dict(pos.to_dict()) == pos
    ends = set()  # the last window of each new rank's stream: its end is cut at a whole batch
    for rank in range(3):
        seen += [int(x) for _, s in _stream(pos.deal, rank, -1, 0, window).batches(b * 2 // 3) for x in s]
        rows = np.concatenate([blk["slot"] for blk in _blocks(worker_items(pos.deal, rank, len(TASKS)))])
        ends |= {int(x) for x in rows[-window:]}
    everything = {int(x) for t in TASKS for x in t}
    counts = np.bincount(seen)
    assert everything - set(seen) <= ends
    assert (counts > 2).sum() == 0 and (counts == 2).sum() < 2 * window


def test_prefix_lengths_are_a_function_of_the_sample():
    slots = np.arange(10_000)
    p = prefix_lengths(3, slots, 16)
    assert p.min() == 1 and p.max() == 15 and np.array_equal(p, prefix_lengths(3, slots, 16))
    assert abs(np.bincount(p)[1:].mean() - 10_000 / 15) < 1 and not np.array_equal(p, prefix_lengths(4, slots, 16))
