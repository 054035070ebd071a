"""Exact quantiles of a distributed column without collecting it: histogram descent, then a small collect.

The caller supplies two distributed primitives over the values (Ray Data scans in `select.py`, plain
numpy in the tests):

- `histogram(edges, closed) -> (counts, mins, maxs)`: per-bin count / min / max of the values in
  [edges[0], edges[-1]) (or the closed interval when `closed`), bins `[edges[i], edges[i+1])`.
- `collect(lo, hi) -> values` in the closed interval [lo, hi] (only called when few values are there).

Each histogram pass narrows the bin holding the wanted rank to that bin's own [min, max], so a few
passes over the data reach a bin small enough to collect (or a single repeated value).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

__all__ = ["Histogram", "order_statistic_pair", "quantile_linear", "local_primitives"]

Histogram = Callable[[np.ndarray, bool], tuple[np.ndarray, np.ndarray, np.ndarray]]
Collect = Callable[[float, float], np.ndarray]


def bin_stats(values: np.ndarray, edges: np.ndarray, closed: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The `histogram` primitive for one array of values (used by every distributed implementation)."""
    bins = len(edges) - 1
    v = values[(values >= edges[0]) & ((values <= edges[-1]) if closed else (values < edges[-1]))]
    idx = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, bins - 1)
    counts = np.bincount(idx, minlength=bins).astype(np.int64)
    mins = np.full(bins, np.inf)
    maxs = np.full(bins, -np.inf)
    np.minimum.at(mins, idx, v)
    np.maximum.at(maxs, idx, v)
    return counts, mins, maxs


def merge_stats(a, b):
    return a[0] + b[0], np.minimum(a[1], b[1]), np.maximum(a[2], b[2])


def local_primitives(values: np.ndarray) -> tuple[Histogram, Collect]:
    """In-memory primitives (tests, small data)."""
    values = np.asarray(values, dtype=np.float64)
    return (
        lambda edges, closed: bin_stats(values, edges, closed),
        lambda lo, hi: values[(values >= lo) & (values <= hi)],
    )


def order_statistic_pair(
    n: int,
    rank: int,
    lo: float,
    hi: float,
    histogram: Histogram,
    collect: Collect,
    bins: int = 1024,
    collect_limit: int = 65536,
) -> tuple[float, float]:
    """(v[rank], v[rank + 1]) of the ascending sorted values (v[rank + 1] = v[rank] at the end).

    `lo`/`hi` are the global min/max and `n` the count of values.
    """
    if not 0 <= rank < n:
        raise ValueError(f"rank {rank} outside [0, {n})")
    below, inside, nxt = 0, n, None  # values < lo; values in [lo, hi]; v[rank + 1] if above [lo, hi]
    for _ in range(64):
        if lo == hi:
            return lo, (lo if rank + 1 - below < inside else (lo if nxt is None else nxt))
        counts, mins, maxs = histogram(np.linspace(lo, hi, bins + 1), True)
        cum = np.cumsum(counts)
        i = int(np.searchsorted(cum, rank - below, side="right"))
        before = below + int(cum[i] - counts[i])
        if rank + 1 - before >= counts[i]:  # v[rank + 1] is the min of the next non-empty bin
            later = np.flatnonzero(counts[i + 1 :])
            nxt = float(mins[i + 1 + later[0]]) if len(later) else nxt
        below, inside, lo, hi = before, int(counts[i]), float(mins[i]), float(maxs[i])
        if inside <= collect_limit and lo != hi:
            vals = np.sort(collect(lo, hi))
            v = float(vals[rank - below])
            after = float(vals[rank - below + 1]) if rank - below + 1 < len(vals) else nxt
            return v, (v if after is None else after)
    raise RuntimeError("quantile descent did not converge")  # pragma: no cover


def quantile_linear(n: int, q: float, lo: float, hi: float, histogram: Histogram, collect: Collect, **kw) -> float:
    """`np.quantile(values, q)` (default 'linear' method), computed with the distributed primitives."""
    if n == 0:
        raise ValueError("no values")
    h = (n - 1) * q
    r = int(math.floor(h))
    a, b = order_statistic_pair(n, r, lo, hi, histogram, collect, **kw)
    t = h - r
    if t == 0:
        return a
    # numpy's _lerp: a + (b - a) * t, computed from b's side when t >= 0.5.
    return b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t
