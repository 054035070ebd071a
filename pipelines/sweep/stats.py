"""Seed statistics for the ablation report: mean, std, a t interval and Welch's t-test.

scipy is optional: without it, Student-t quantiles come from a table (df 1..30, 1.96 beyond; a
non-integer Welch df is rounded down, which is conservative) and p-values are not given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["Summary", "Welch", "summarize", "t_quantile_975", "welch_test", "ALPHA"]

ALPHA = 0.05
# t_{0.975, df} for df = 1..30 (two-sided 95%)
T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


def _scipy_t() -> Any:
    """scipy.stats.t, or None when scipy is not installed."""
    try:
        from scipy import stats
    except ImportError:
        return None
    return stats.t


def t_quantile_975(df: float, use_scipy: bool = True) -> float:
    """The 0.975 quantile of Student's t with `df` degrees of freedom (df >= 1)."""
    t = _scipy_t() if use_scipy else None
    if t is not None:
        return float(t.ppf(0.975, df))
    k = max(1, int(math.floor(df + 1e-9)))
    return T975[k - 1] if k <= len(T975) else 1.96


@dataclass
class Summary:
    """Mean over seeds; std (sample, n-1), and the 95% t interval when n >= 2."""

    n: int
    mean: float | None
    std: float | None = None
    lo: float | None = None
    hi: float | None = None


def summarize(xs: list[float | None], use_scipy: bool = True) -> Summary:
    """Mean, sample std and mean ± t_{0.975,n-1}·std/sqrt(n) of the values that are not None."""
    vals = [float(x) for x in xs if x is not None]
    n = len(vals)
    if n == 0:
        return Summary(0, None)
    mean = sum(vals) / n
    if n == 1:
        return Summary(1, mean)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    half = t_quantile_975(n - 1, use_scipy) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


@dataclass
class Welch:
    """Welch's unequal-variance t-test of a against b, two-sided at ALPHA."""

    t: float
    df: float
    critical: float
    p: float | None  # None without scipy
    significant: bool


def welch_test(a: list[float], b: list[float], use_scipy: bool = True) -> Welch | None:
    """None unless both samples have n >= 2. Significant iff |t| > t_{0.975, df} (Welch–Satterthwaite df)."""
    if len(a) < 2 or len(b) < 2:
        return None
    sa, sb = summarize(a, use_scipy), summarize(b, use_scipy)
    va, vb = sa.std**2 / sa.n, sb.std**2 / sb.n
    diff = sa.mean - sb.mean
    if va + vb == 0:  # both samples constant: separable iff the means differ
        same = math.isclose(sa.mean, sb.mean)
        return Welch(
            0.0 if same else math.copysign(math.inf, diff), float(sa.n + sb.n - 2), 0.0, 1.0 if same else 0.0, not same
        )
    t = diff / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (sa.n - 1) + vb**2 / (sb.n - 1))
    crit = t_quantile_975(df, use_scipy)
    st = _scipy_t() if use_scipy else None
    p = float(2 * st.sf(abs(t), df)) if st is not None else None
    return Welch(t, df, crit, p, abs(t) > crit)
