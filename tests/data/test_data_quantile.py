"""The distributed quantile (histogram descent) equals np.quantile exactly (no Ray: local primitives)."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.data.quantile import local_primitives, order_statistic_pair, quantile_linear


def _cases():
    r = np.random.default_rng(0)
    yield "uniform", r.random(20_000)
    yield "normal_ties", np.round(r.normal(size=5000), 1)
    yield "constant", np.full(300, 0.25)
    yield "half_constant", np.concatenate([r.random(500), np.full(500, 0.5)])
    yield "tiny", np.array([0.3])
    yield "two", np.array([0.9, 0.1])
    yield "float32_scores", r.beta(2, 5, 7000).astype(np.float32).astype(np.float64)


@pytest.mark.parametrize("name, values", list(_cases()))
@pytest.mark.parametrize("q", [0.85, 0.0, 1.0, 0.5, 0.123])
def test_matches_numpy_quantile(name, values, q):
    hist, collect = local_primitives(values)
    got = quantile_linear(len(values), q, values.min(), values.max(), hist, collect, bins=16, collect_limit=20)
    assert got == np.quantile(values, q)


def test_order_statistics_never_collect_much():
    values = np.random.default_rng(1).random(100_000)
    hist, collect = local_primitives(values)
    sizes = []

    def spy(lo, hi):
        out = collect(lo, hi)
        sizes.append(len(out))
        return out

    v, nxt = order_statistic_pair(len(values), 84_999, 0.0, 1.0, hist, spy, bins=1024, collect_limit=1000)
    s = np.sort(values)
    assert (v, nxt) == (s[84_999], s[85_000]) and max(sizes) <= 1000
