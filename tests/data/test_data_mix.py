"""Mixing maths (no Ray): realised fraction, determinism, new order per epoch, plan partitions."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.data.mix import CuratedStream, SlotPattern, aug_seeds, plan_ranges, row_order, shard_order


@pytest.mark.parametrize("p", [0.8, 0.5, 0.15, 0.97, 1.0])
@pytest.mark.parametrize("seed", range(5))
def test_fraction_over_10000_samples_within_001(p, seed):
    mask = SlotPattern(p, seed, epoch=0).mask(0, 10_000)
    assert abs(mask.mean() - p) <= 0.01
    for start in (0, 1234, 50_001):  # any window of 10,000 consecutive samples
        assert abs(SlotPattern(p, seed, 3).mask(start, start + 10_000).mean() - p) <= 0.01


def test_each_slot_is_pool_with_probability_p():
    hits = np.mean([SlotPattern(0.8, s, 0).mask(0, 64) for s in range(2000)], axis=0)
    assert np.all(np.abs(hits - 0.8) < 0.05)  # every position, not only the average


def test_deterministic_for_seed_and_new_each_epoch():
    a = SlotPattern(0.8, 1, 0).mask(0, 5000)
    assert np.array_equal(a, SlotPattern(0.8, 1, 0).mask(0, 5000))
    assert not np.array_equal(a, SlotPattern(0.8, 1, 1).mask(0, 5000))
    assert not np.array_equal(a, SlotPattern(0.8, 2, 0).mask(0, 5000))
    assert not np.array_equal(shard_order(50, 1, 0), shard_order(50, 1, 1))
    assert not np.array_equal(row_order(100, 1, 0, "00001"), row_order(100, 1, 1, "00001"))
    assert not np.array_equal(row_order(100, 1, 0, "00001"), row_order(100, 1, 0, "00002"))


def test_pieces_agree_with_the_whole():
    pat = SlotPattern(0.7, 4, 2, window=16)
    whole = pat.mask(0, 3000)
    assert np.array_equal(np.concatenate([pat.mask(0, 1001), pat.mask(1001, 3000)]), whole)
    pool_slots = np.flatnonzero(whole)
    for i in (0, 1, 17, 500, len(pool_slots) - 1):
        assert pat.slot_of_pool(i) == pool_slots[i]
        assert pat.pool_before(int(pool_slots[i])) == i


def test_plan_ranges_partition_the_epoch():
    pat = SlotPattern(0.8, 0, 0)
    counts = [30, 0, 120, 7, 64]
    ranges = plan_ranges(counts, pat)
    assert ranges[0].slot_start == 0
    for a, b in zip(ranges, ranges[1:]):
        assert a.slot_stop == b.slot_start and a.cur_stop == b.cur_start
    mask = pat.mask(0, ranges[-1].slot_stop)
    for r, n in zip(ranges, counts):
        part = mask[r.slot_start : r.slot_stop]
        assert part.sum() == n == r.n_pool and (~part).sum() == r.cur_stop - r.cur_start
    assert mask[-1]  # the epoch ends on its last pool sample
    assert plan_ranges([0, 0], pat) == []


def test_curated_stream_visits_every_row_once_per_cycle():
    stream = CuratedStream((5, 0, 7, 3), seed=0, epoch=0)
    seen = [(c, chunk, int(r)) for c, chunk, rows in stream.locate(0, 30) for r in rows]
    assert len(seen) == 30
    first = sorted((ch, r) for c, ch, r in seen if c == 0)
    assert first == sorted((ch, r) for ch, n in enumerate((5, 0, 7, 3)) for r in range(n))
    pieces = stream.locate(4, 11) + stream.locate(11, 26)
    assert [(c, ch, int(r)) for c, ch, rows in pieces for r in rows] == seen[4:26]
    draws = stream.draws_per_chunk(26)
    counted = np.bincount([ch for _, ch, _ in seen[:26]], minlength=4)
    assert np.array_equal(draws, counted)
    other = CuratedStream((5, 0, 7, 3), seed=0, epoch=1).locate(0, 15)
    assert [(ch, list(r)) for _, ch, r in other] != [(ch, list(r)) for _, ch, r in stream.locate(0, 15)]


def test_aug_seeds_deterministic_and_distinct():
    slots = np.arange(10_000)
    a = aug_seeds(3, 0, slots)
    assert np.array_equal(a, aug_seeds(3, 0, slots)) and len(np.unique(a)) == len(a) and a.min() >= 0
    assert not np.array_equal(a, aug_seeds(3, 1, slots))
