"""Report charts from synthetic data: loss curves over seeds, panels per target, the per-target scatter."""

from __future__ import annotations

from types import SimpleNamespace

from pipelines.sweep import charts
from pipelines.sweep.report import Row, summarize_rows


def test_mean_curve_uses_the_steps_every_seed_logged():
    cv = charts.mean_curve("pixel", "pixel", [{1: 1.0, 2: 0.5, 3: 0.25}, {1: 3.0, 2: 1.5}, {}])
    assert (cv.steps, cv.mean, cv.lo, cv.hi, cv.n) == ([1, 2], [2.0, 1.0], [1.0, 0.5], [3.0, 1.5], 2)


def _rec(axis, value, seed, target, run_id, loss=1.0, att=50.0):
    return Row(axis, value, f"{axis}={value}", run_id, loss, 40.0, att, 100.0, None, seed, target=target)


class _Client:
    """get_metric_history over made-up runs: run 'a-s' logs loss a*(1+s)/step."""

    def get_metric_history(self, run_id, key):
        assert key == "train/loss"
        scale, seed = run_id.split("-")
        return [SimpleNamespace(step=s, value=float(scale) * (1 + int(seed)) / s) for s in range(1, 6)]


def test_axis_curves_and_panels_never_mix_targets(tmp_path):
    recs = [
        *(_rec("base", "base", s, "norm_pixel", f"1-{s}") for s in (0, 1)),
        *(_rec("target", "norm_pixel", s, "norm_pixel", f"1-{s}") for s in (0, 1)),
        *(_rec("target", "kmeans", s, "kmeans", f"5-{s}") for s in (0, 1)),
        *(_rec("order", "spiral", s, "norm_pixel", f"2-{s}") for s in (0, 1)),
    ]
    target = charts.axis_curves(_Client(), recs, "target")
    assert [(c.label, c.target, c.n) for c in target] == [
        ("base", "norm_pixel", 2),
        ("norm_pixel", "norm_pixel", 2),
        ("kmeans", "kmeans", 2),
    ]
    assert target[2].mean[0] == (5 * 1 + 5 * 2) / 2 and target[2].lo[0] == 5 and target[2].hi[0] == 10
    panels = charts._panels(target, "target")
    assert [t for t, _ in panels] == ["target=norm_pixel", "target=kmeans"], "one per value; base = norm_pixel"
    order = charts.axis_curves(_Client(), recs, "order")
    assert [c.label for c in order] == ["base", "spiral"]
    assert [t for t, _ in charts._panels(order, "order")] == ["axis: order"]
    grid_like = [*order, charts.Curve("x", "kmeans", [1], [1.0], [1.0], [1.0], 1)]
    assert [t for t, _ in charts._panels(grid_like, "grid")] == ["target: norm_pixel", "target: kmeans"]
    assert charts.loss_curve_chart(target, "target", tmp_path / "t.png").stat().st_size > 0


def test_scatter_has_one_panel_per_target_and_skips_mixed_rows(tmp_path):
    rows = summarize_rows(
        [
            _rec("target", "pixel", 0, "pixel", "r1", loss=0.9),
            _rec("target", "kmeans", 0, "kmeans", "r2", loss=4.0),
            _rec("order", "spiral", 0, "pixel", "r3", loss=0.8),
        ]
    )
    assert [r.target for r in rows] == ["pixel", "kmeans", "pixel"]
    assert charts.loss_vs_attentive_chart(rows, tmp_path / "s.png").stat().st_size > 0
    mixed = summarize_rows([_rec("grid", "a", 0, "pixel", "r1"), _rec("grid", "a", 1, "kmeans", "r2")])
    assert mixed[0].target is None and charts.loss_vs_attentive_chart(mixed, tmp_path / "m.png") is None
