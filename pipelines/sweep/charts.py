"""Sweep report charts that read more than the table: loss curves per axis, loss against attentive top-1.

Losses are compared only within one target: norm_pixel and pixel are MSEs on differently scaled targets
and k-means / dVAE are cross-entropies, so a curve or a point is drawn beside others only when it has the
same target. The target axis (whose values *are* targets) gets one panel per value, each on its own scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["Curve", "mean_curve", "axis_curves", "loss_curve_chart", "loss_vs_attentive_chart"]

LOSS_KEY = "train/loss"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@dataclass
class Curve:
    """One (axis, value)'s training loss: the mean over seeds per step, with the min and max over seeds."""

    label: str
    target: str | None
    steps: list[int]
    mean: list[float]
    lo: list[float]
    hi: list[float]
    n: int


def mean_curve(label: str, target: str | None, histories: list[dict[int, float]]) -> Curve:
    """Steps every seed logged; mean, min and max over the seeds at each."""
    histories = [h for h in histories if h]
    common = sorted(set.intersection(*(set(h) for h in histories))) if histories else []
    vals = [[h[s] for h in histories] for s in common]
    return Curve(
        label,
        target,
        common,
        [sum(v) / len(v) for v in vals],
        [min(v) for v in vals],
        [max(v) for v in vals],
        len(histories),
    )


def _history(c, run_id: str, cache: dict) -> dict[int, float]:
    if run_id not in cache:
        cache[run_id] = {m.step: m.value for m in c.get_metric_history(run_id, LOSS_KEY)}
    return cache[run_id]


def axis_curves(c, records: list, axis: str) -> list[Curve]:
    """The axis's values (and the base run, as the reference) from the per-seed records' runs."""
    cache: dict = {}
    out = []
    for value in dict.fromkeys(r.value for r in records if r.axis in (axis, "base")):
        recs = [r for r in records if r.axis in (axis, "base") and r.value == value and r.run_id]
        if recs:
            hists = [_history(c, r.run_id, cache) for r in recs]
            out.append(mean_curve(value, recs[0].target, hists))
    return out


def _panels(curves: list[Curve], axis: str) -> list[tuple[str, list[Curve]]]:
    """One panel per target; the target axis: one per value (its own loss, its own scale)."""
    if axis == "target":  # the base is drawn only when no value has its target (else that value is it)
        shown = {c.target for c in curves if c.label != "base"}
        keep = [c for c in curves if c.label != "base" or c.target not in shown]
        return [(f"target={c.label} ({c.target})" if c.label == "base" else f"target={c.label}", [c]) for c in keep]
    targets = list(dict.fromkeys(c.target for c in curves))
    return [
        (f"target: {t}" if len(targets) > 1 else f"axis: {axis}", [c for c in curves if c.target == t]) for t in targets
    ]


def loss_curve_chart(curves: list[Curve], axis: str, path: Path) -> Path:
    """Overlaid training-loss curves (mean over seeds, min-max band), one panel per target."""
    plt = _plt()
    panels = _panels(curves, axis)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    for ax, (title, group) in zip(axes[0], panels, strict=True):
        for cv in group:
            style = "--" if cv.label == "base" else "-"
            (line,) = ax.plot(cv.steps, cv.mean, style, lw=1.2, label=f"{cv.label} (n={cv.n})")
            if cv.n > 1:
                ax.fill_between(cv.steps, cv.lo, cv.hi, color=line.get_color(), alpha=0.2, lw=0)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.legend(fontsize=7)
    fig.suptitle(f"{axis}: training loss, mean over seeds (band: min-max)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def loss_vs_attentive_chart(rows: list, path: Path) -> Path | None:
    """Final loss against attentive top-1, one panel per target; points named in a legend (no overlapping
    labels). Rows whose runs mix targets (grid means over the target axis) are left out."""
    plt = _plt()
    pts = [r for r in rows if r.target and r.final_loss is not None and r.attentive_top1 is not None]
    targets = list(dict.fromkeys(r.target for r in pts))
    if not targets:
        return None
    fig, axes = plt.subplots(1, len(targets), figsize=(4.8 * len(targets), 3.6), squeeze=False)
    markers = "osD^v<>pPX*h"
    for ax, t in zip(axes[0], targets, strict=True):
        for i, r in enumerate(r for r in pts if r.target == t):
            ax.errorbar(
                r.final_loss,
                r.attentive_top1,
                xerr=r.stat("final_loss").std or 0,
                yerr=r.stat("attentive_top1").std or 0,
                fmt=markers[i % len(markers)],
                label=r.value if r.axis == "grid" else f"{r.axis}={r.value}",
                capsize=2,
            )
        ax.set_title(f"target: {t}", fontsize=9)
        ax.set_xlabel("final pre-training loss (mean over seeds)")
        ax.set_ylabel("attentive top-1 (%)")
        ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
