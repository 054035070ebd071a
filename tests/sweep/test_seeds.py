"""Seeded sweeps without Ray: planning per seed, the seed statistics, and the report from synthetic records."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from pipelines.config import ConfigError
from pipelines.sweep import stats
from pipelines.sweep.report import (
    PAPER,
    Row,
    axis_verdicts,
    paper_best,
    summarize_rows,
    table_rows,
    to_html,
    to_markdown,
)
from pipelines.sweep.spec import load_sweep


def _sweep(tmp_path: Path, seeds: list[int] | None = None, mode: str = "one_at_a_time", seed: int = 0) -> Path:
    base = {
        "name": "x",
        "seed": seed,
        "model": {"preset": "aim-test"},
        "data": {"pool": {"uri": str(tmp_path / "pool")}, "curated": {"uri": str(tmp_path / "curated")}},
    }
    spec = {
        "name": "sd",
        "experiment": base,
        "mode": mode,
        "axes": {"target": {"norm_pixel": {"target.name": "norm_pixel"}, "pixel": {"target.name": "pixel"}}},
    }
    if seeds is not None:
        spec["seeds"] = seeds
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_without_seeds_trial_ids_and_names_are_unchanged(tmp_path):
    _, trials = load_sweep(_sweep(tmp_path))
    assert [t.trial_id for t in trials] == ["base", "target=norm_pixel", "target=pixel"]
    # the names the planner gave before seeds existed: sweep-<safe id>-<sha1(id)[:6]>
    assert [t.config.name for t in trials] == [
        "sd-base-1405df",
        "sd-target_norm_pixel-d5f258",
        "sd-target_pixel-8931b1",
    ]
    assert all("seed=" not in o for t in trials for o in t.overrides) and {t.seed for t in trials} == {0}


def test_seeds_plan_every_trial_per_seed_with_per_seed_dedup(tmp_path):
    _, trials = load_sweep(_sweep(tmp_path, [0, 1, 2]))
    assert [t.trial_id for t in trials] == [
        "base",
        "target=norm_pixel",
        "target=pixel",
        "base-s1",
        "target=norm_pixel-s1",
        "target=pixel-s1",
        "base-s2",
        "target=norm_pixel-s2",
        "target=pixel-s2",
    ]
    assert [t.duplicate_of for t in trials] == [None, "base", None, None, "base-s1", None, None, "base-s2", None]
    assert [t.seed for t in trials] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [t.config.seed for t in trials] == [t.seed for t in trials]
    names = [t.config.name for t in trials]
    assert len(set(names)) == len(names) and names[:3] == [t.config.name for t in load_sweep(_sweep(tmp_path))[1]]
    assert trials[4].config.tags["seed"] == "1" and trials[4].config.tags["axis"] == "target"
    again = [t.config.name for t in load_sweep(_sweep(tmp_path, [0, 1, 2]))[1]]
    assert again == names, "deterministic"


def test_seed_suffix_is_relative_to_the_base_seed(tmp_path):
    _, trials = load_sweep(_sweep(tmp_path, [7, 3], mode="grid", seed=3))
    assert [t.trial_id for t in trials] == [
        "target=norm_pixel-s7",
        "target=pixel-s7",
        "target=norm_pixel",
        "target=pixel",
    ]
    assert [t.seed for t in trials] == [7, 7, 3, 3]


@pytest.mark.parametrize("bad", [[], [1, 1], "x"])
def test_bad_seeds_are_config_errors(tmp_path, bad):
    with pytest.raises(ConfigError, match="seeds"):
        load_sweep(_sweep(tmp_path, bad))


def test_t_table_matches_scipy():
    pytest.importorskip("scipy")
    for df in range(1, 31):
        assert stats.t_quantile_975(df, use_scipy=False) == pytest.approx(stats.t_quantile_975(df), abs=2e-3)
    assert stats.t_quantile_975(31.5, use_scipy=False) == 1.96
    assert stats.t_quantile_975(4.7, use_scipy=False) == stats.T975[3]  # rounded down: conservative


@pytest.mark.parametrize("use_scipy", [True, False])
def test_summary_and_interval(use_scipy):
    s = stats.summarize([1.0, 2.0, 3.0, None], use_scipy)
    assert (s.n, s.mean, s.std) == (3, 2.0, 1.0)
    half = 4.303 / math.sqrt(3)
    assert s.lo == pytest.approx(2 - half, abs=1e-3) and s.hi == pytest.approx(2 + half, abs=1e-3)
    one = stats.summarize([5.0], use_scipy)
    assert (one.n, one.mean, one.std, one.lo) == (1, 5.0, None, None)
    assert stats.summarize([], use_scipy).n == 0


@pytest.mark.parametrize("use_scipy", [True, False])
def test_welch_against_scipy(use_scipy):
    sp = pytest.importorskip("scipy.stats")
    a, b = [70.1, 70.9, 71.4, 70.5], [68.0, 69.5, 68.8]
    w = stats.welch_test(a, b, use_scipy)
    ref = sp.ttest_ind(a, b, equal_var=False)
    assert w.t == pytest.approx(ref.statistic) and w.significant == (ref.pvalue < 0.05)
    if use_scipy:
        assert w.p == pytest.approx(ref.pvalue)
    close = stats.welch_test([70.0, 71.0], [70.4, 70.6], use_scipy)
    assert not close.significant
    assert stats.welch_test([70.0], [60.0, 61.0], use_scipy) is None


def _records(values: dict[tuple[str, str], list[float]]) -> list[Row]:
    """Per-run records: one per seed, attentive top-1 from `values`, linear 10 lower."""
    out = []
    for (axis, value), xs in values.items():
        for seed, x in enumerate(xs):
            out.append(
                Row(
                    axis,
                    value,
                    f"{axis}={value}-s{seed}",
                    f"run{seed}",
                    1.0 + seed / 10,
                    x - 10,
                    x,
                    100.0,
                    {axis: value},
                    seed,
                )
            )
    return out


def test_report_rows_and_verdicts_from_synthetic_records():
    recs = _records(
        {
            ("base", "base"): [72.0, 72.4, 71.8],
            ("order", "raster"): [72.0, 72.4, 71.8],
            ("order", "random"): [65.0, 65.5, 64.9],  # reproduced
            ("crop_scale", "0.4"): [60.0, 60.2, 59.9],
            ("crop_scale", "1.0"): [70.0, 70.3, 69.8],  # reversed
            ("head", "mlp"): [70.0, 72.0, 71.0],
            ("head", "transformer"): [70.5, 71.0, 72.5],  # noise
            ("head_width", "64"): [70.0, 71.0, 72.0],
        }
    )
    rows = summarize_rows(recs)
    assert [(r.axis, r.value, r.n) for r in rows][:3] == [
        ("base", "base", 3),
        ("order", "raster", 3),
        ("order", "random", 3),
    ]
    raster = rows[1]
    assert raster.attentive_top1 == pytest.approx(72.0666, abs=1e-3) and raster.samples["attentive_top1"] == [
        72.0,
        72.4,
        71.8,
    ]
    cells = dict(
        zip(["axis", "value", "n", "loss", "lin", "lin_ci", "att", "att_ci", "ips", "paper"], table_rows(rows)[1])
    )
    assert cells["n"] == "n=3" and cells["att"] == "72.07 ± 0.31" and cells["att_ci"].startswith("[71.")
    assert cells["paper"] == "69.5 / 77.4" == f"{PAPER[('order', 'raster')][0]} / {PAPER[('order', 'raster')][1]}"
    v = {x.axis: x for x in axis_verdicts(rows)}
    assert (v["order"].best, v["order"].verdict) == ("raster", "reproduced")
    assert (v["crop_scale"].best, v["crop_scale"].verdict) == ("0.4", "reversed")
    assert (v["head"].best, v["head"].verdict) == ("transformer", "not separable from seed noise")
    assert "Welch" in v["head"].details[0]
    assert v["head_width"].best is None and "no paper reference" in v["head_width"].verdict
    md = to_markdown("t", rows)
    assert "Welch's t-test" in md and "two-sided" in md and "| order | raster | reproduced |" in md
    assert "72.07 ± 0.31" in to_html("t", rows, [])


def test_one_seed_shows_the_value_n1_and_no_interval():
    rows = summarize_rows(
        _records(
            {
                ("order", "raster"): [72.0],
                ("order", "spiral"): [70.0],
                ("target", "norm_pixel"): [60.0],
                ("target", "pixel"): [61.0],
            }
        )
    )
    cells = table_rows(rows)[0]
    assert cells[2] == "n=1" and cells[6] == "72.00" and cells[7] == "—"
    v = {x.axis: x for x in axis_verdicts(rows)}
    assert v["order"].verdict == "not separable (one seed)"
    assert (v["target"].best, v["target"].verdict) == ("norm_pixel", "not separable (one seed)")


def test_grid_marginals_are_per_seed_then_over_seeds():
    recs = []
    for seed, shift in enumerate([0.0, 1.0]):
        for t, a, att in [
            ("norm_pixel", "prefix", 70),
            ("norm_pixel", "causal", 60),
            ("pixel", "prefix", 66),
            ("pixel", "causal", 58),
        ]:
            recs.append(
                Row(
                    "grid",
                    f"target={t}, attention={a}",
                    f"t{seed}",
                    "r",
                    1.0,
                    att - 10,
                    att + shift,
                    1.0,
                    {"target": t, "attention": a},
                    seed,
                )
            )
    rows = summarize_rows(recs, grid=True)
    np_ = next(r for r in rows if (r.axis, r.value) == ("target", "norm_pixel"))
    assert np_.samples["attentive_top1"] == [65.0, 66.0] and np_.n == 2
    assert [r.axis for r in rows].count("grid") == 4 and all(r.n == 2 for r in rows)
    assert paper_best("attention", ["prefix", "causal"]) == "prefix"
    assert paper_best("shape", ["deep_128x9", "wide_192x4"]) == "wide_192x4"


@pytest.mark.ray
def test_seeded_sweep_end_to_end(ray_local, demo_data, tmp_path):
    """Two seeds of the base (the one axis value equals the base): 2 runs, params to group by, report n=2."""
    from pipelines import tracking
    from pipelines.sweep.report import write_report
    from pipelines.sweep.runner import plan_resources, run_sweep
    from tests.conftest import experiment

    base = experiment(
        demo_data,
        tmp_path,
        "unused",
        schedule={"steps": 6},
        storage={"checkpoint_every": 5},
        scaling={"num_workers": 0, "cpus_per_worker": 0.25},
        probe={"epochs": 5, "batch_size": 64, "lr": 3e-3},
    )
    base.pop("name")
    path = tmp_path / "seeded.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "seeded",
                "experiment": base,
                "seeds": [0, 1],
                "axes": {"target": {"norm_pixel": {"target.name": "norm_pixel"}}},
                "resources": {"cpus_per_trial": 0.25},
            }
        )
    )
    spec, trials = load_sweep(path)
    plan = plan_resources(spec, trials, 2.0)
    assert [t.trial_id for t in plan.trials] == ["base", "base-s1"]
    results, uri, parent = run_sweep(spec, plan)
    assert not results.errors
    c = tracking.client(uri)
    kids = c.search_runs(
        [c.get_run(parent).info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'"
    )
    got = sorted(
        (k.data.params["axis"], k.data.params["value"], k.data.params["seed"], k.data.tags["seed"]) for k in kids
    )
    assert got == [("base", "base", "0", "0"), ("base", "base", "1", "1")]
    rows, out = write_report(uri, "seeded", tmp_path / "report")
    assert [(r.axis, r.value, r.n) for r in rows] == [("base", "base", 2), ("target", "norm_pixel", 2)]
    assert all(r.stat("attentive_top1").lo is not None for r in rows)
    assert "Welch" in (out / "report.md").read_text() and (out / "axis_target.png").stat().st_size > 0


def test_report_command_prints_rows_and_verdicts(tmp_path, monkeypatch):
    """`aimctl report`'s console output (write_report faked with synthetic rows)."""
    from pipelines import cli_sweep
    from pipelines.sweep import report

    rows = summarize_rows(_records({("order", "raster"): [72.0, 72.4], ("order", "random"): [65.0, 65.5]}))
    monkeypatch.setattr(report, "write_report", lambda uri, name, out, exp=None: (rows, out))
    monkeypatch.setattr(cli_sweep.console, "_width", 250)  # restored to None (auto) afterwards
    with cli_sweep.console.capture() as cap:
        cli_sweep.report("fake", out=tmp_path, tracking_uri=f"sqlite:///{tmp_path / 'm.db'}", experiment=None)
    text = cap.get()
    assert "72.20 ± 0.28" in text and "reproduced" in text and "Welch" in text
