"""`aimctl report`: the paper-style ablation table from MLflow (Markdown, HTML, PNG charts).

Each row (axis, value) is the mean over the sweep's seeds with its std and 95% t interval (n shown); each
axis gets a verdict: is the paper's direction reproduced, reversed, or not separable from seed noise.
"""

from __future__ import annotations

import html
import json
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipelines import tracking
from pipelines.sweep import charts
from pipelines.sweep.stats import ALPHA, Summary, summarize, welch_test

__all__ = [
    "Row",
    "Verdict",
    "collect_rows",
    "summarize_rows",
    "axis_verdicts",
    "write_report",
    "PAPER",
    "PAPER_BEST",
    "PAPER_SOURCE",
]

PAPER_SOURCE = (
    "El-Nouby et al. 2024, 'Scalable Pre-training of Large Autoregressive Image Models' "
    "(arXiv 2401.08541), AIM-0.6B ablations on IN-1k, as listed in the project's REFERENCE.md"
)
# The paper's AIM-0.6B ablations (linear / attentive top-1 on IN-1k), where the reference gives them.
PAPER: dict[tuple[str, str], tuple[float | None, float]] = {
    ("order", "raster"): (69.5, 77.4),
    ("order", "spiral"): (67.7, 76.3),
    ("order", "checkerboard"): (68.2, 76.0),
    ("order", "random"): (65.8, 75.7),
    ("crop_scale", "0.08"): (68.4, 77.7),
    ("crop_scale", "0.4"): (70.0, 78.2),
    ("crop_scale", "1.0"): (49.6, 63.5),
    ("head", "none"): (64.0, 75.4),
    ("head", "mlp"): (70.0, 78.2),
    ("head", "transformer"): (70.5, 78.5),
    ("head_width", "512"): (None, 77.7),
    ("head_width", "1024"): (None, 78.1),
    ("head_width", "2048"): (None, 78.2),
    ("head_depth", "6"): (None, 76.2),
    ("head_depth", "8"): (None, 77.1),
    ("head_depth", "12"): (None, 78.2),
}
# Axes where the paper names the winner without numbers here: the value (or a value's prefix) it found best.
PAPER_BEST: dict[str, str] = {"target": "norm_pixel", "attention": "prefix", "shape": "wide"}
METRICS = ("final_loss", "linear_top1", "attentive_top1", "images_per_s")
VERDICT_METRIC = "attentive_top1"
TEST_NOTE = (
    f"Verdicts compare, on attentive top-1 over seeds, the paper's best value of each axis with each "
    f"other value: Welch's t-test (unequal variances), two-sided, alpha {ALPHA}. With one seed the "
    "verdict is 'not separable (one seed)'. Intervals: mean ± t(0.975, n-1)·std/sqrt(n). "
    f"Paper numbers: {PAPER_SOURCE}."
)


@dataclass
class Row:
    """One (axis, value): metric means over seeds; `samples` holds the per-seed values behind them."""

    axis: str
    value: str
    trial: str
    run_id: str | None
    final_loss: float | None
    linear_top1: float | None
    attentive_top1: float | None
    images_per_s: float | None
    assignments: dict[str, str] | None = None
    seed: int | None = None  # set on per-run records; None on a row summarised over seeds
    samples: dict[str, list[float]] = field(default_factory=dict)
    target: str | None = None  # the pre-training target (losses compare only within one); None: mixed

    @property
    def n(self) -> int:
        """Seeds with a value (of any metric)."""
        return max((len(v) for v in self.samples.values()), default=0)

    def stat(self, metric: str) -> Summary:
        return summarize(self.samples.get(metric, []))


@dataclass
class Verdict:
    axis: str
    best: str | None  # the paper's best value among this axis's values
    verdict: str
    details: list[str] = field(default_factory=list)


def _find_parent(c, name_or_id: str, experiment: str | None) -> str:
    try:
        return c.get_run(name_or_id).info.run_id
    except Exception:  # noqa: BLE001 - not a run id: look it up as a sweep name
        pass
    exps = [c.get_experiment_by_name(experiment)] if experiment else c.search_experiments()
    ids = [e.experiment_id for e in exps if e is not None]
    found = c.search_runs(ids, filter_string=f"tags.`aim.run_key` = 'sweep:{name_or_id}'", max_results=1)
    if not found:
        raise LookupError(f"no sweep named {name_or_id!r} (and no run with that id) in MLflow")
    return found[0].info.run_id


def _plan(c, parent: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = c.download_artifacts(parent, "plan.json", tmp)
        return json.loads(Path(path).read_text())


def _metric_mean(c, run_id: str, key: str) -> float | None:
    hist = c.get_metric_history(run_id, key)
    return sum(m.value for m in hist) / len(hist) if hist else None


def _records(c, parent: str) -> tuple[dict, list[Row]]:
    """The plan and one record per planned trial (each seed's own); values equal to the base reuse its run."""
    plan = _plan(c, parent)
    children = c.search_runs(
        [c.get_run(parent).info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'"
    )
    by_trial = {r.data.tags.get("trial"): r for r in children}
    rows = []
    for t in plan["trials"]:
        run = by_trial.get(t["duplicate_of"] or t["trial_id"])
        m = run.data.metrics if run else {}
        value = (
            ", ".join(f"{a}={v}" for a, v in t.get("assignments", {}).items()) if t["axis"] == "grid" else t["value"]
        )
        rows.append(
            Row(
                t["axis"],
                value,
                t["trial_id"],
                run.info.run_id if run else None,
                m.get("train/loss"),
                m.get("probe/linear_top1"),
                m.get("probe/attentive_top1"),
                _metric_mean(c, run.info.run_id, "train/images_per_s") if run else None,
                t.get("assignments"),
                int(t.get("seed", 0)),
                target=run.data.tags.get("target") if run else None,
            )
        )
    return plan, rows


def collect_rows(c, parent: str) -> list[Row]:
    """One row per (axis, value) of the plan, summarised over seeds."""
    plan, records = _records(c, parent)
    return summarize_rows(records, grid=plan.get("mode") == "grid")


def summarize_rows(records: list[Row], grid: bool = False) -> list[Row]:
    """Per-run records (one per trial and seed) -> one row per (axis, value) with means and per-seed
    samples. Grid sweeps first get, per seed, each axis value's mean over the other axes."""
    if grid:
        seeds = list(dict.fromkeys(r.seed for r in records))
        per_seed = [_with_marginals([r for r in records if r.seed == s]) for s in seeds]
        records = [r for rows in per_seed for r in rows if r.axis != "grid"]
        records += [r for rows in per_seed for r in rows if r.axis == "grid"]
    groups: dict[tuple[str, str], list[Row]] = {}
    for r in records:
        groups.setdefault((r.axis, r.value), []).append(r)
    out = []
    for (axis, value), rs in groups.items():
        samples = {m: [getattr(r, m) for r in rs if getattr(r, m) is not None] for m in METRICS}
        means = {m: (sum(v) / len(v) if v else None) for m, v in samples.items()}
        out.append(
            Row(
                axis,
                value,
                rs[0].trial,
                rs[0].run_id,
                means["final_loss"],
                means["linear_top1"],
                means["attentive_top1"],
                means["images_per_s"],
                rs[0].assignments,
                None,
                samples,
                _common_target(rs),
            )
        )
    return out


def _common_target(rows: list[Row]) -> str | None:
    targets = {r.target for r in rows}
    return targets.pop() if len(targets) == 1 else None


def _mean(xs: list[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _with_marginals(rows: list[Row]) -> list[Row]:
    """Grid sweeps (one seed's rows): per axis value, the mean over the other axes (what the paper-style
    table reads)."""
    out = []
    for axis in dict.fromkeys(a for r in rows for a in (r.assignments or {})):
        for value in dict.fromkeys((r.assignments or {}).get(axis) for r in rows if r.assignments):
            sub = [r for r in rows if (r.assignments or {}).get(axis) == value]
            out.append(
                Row(
                    axis,
                    value,
                    f"mean of {len(sub)}",
                    None,
                    _mean([r.final_loss for r in sub]),
                    _mean([r.linear_top1 for r in sub]),
                    _mean([r.attentive_top1 for r in sub]),
                    _mean([r.images_per_s for r in sub]),
                    None,
                    sub[0].seed if sub else None,
                    target=_common_target(sub),
                )
            )
    return out + rows


def paper_best(axis: str, values: list[str]) -> str | None:
    """The value the paper found best on this axis, among `values`: its highest attentive number when the
    reference gives numbers for two or more of them, else the winner it names (PAPER_BEST), else None."""
    scored = [(PAPER[(axis, v)][1], v) for v in values if (axis, v) in PAPER]
    if len(scored) >= 2:
        return max(scored)[1]
    named = PAPER_BEST.get(axis)
    if named is None:
        return None
    return next((v for v in values if v == named), None) or next((v for v in values if v.startswith(named)), None)


def _compare(best: Row, other: Row) -> tuple[str, str]:
    """(outcome, detail) of the paper's best value against another value, on VERDICT_METRIC."""
    a, b = best.samples.get(VERDICT_METRIC, []), other.samples.get(VERDICT_METRIC, [])
    if not a or not b:
        return "no data", f"{best.value} vs {other.value}: no data"
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    head = f"{best.value} {ma:.2f} (n={len(a)}) vs {other.value} {mb:.2f} (n={len(b)})"
    w = welch_test(a, b)
    if w is None:
        return "one seed", f"{head}: not separable (one seed)"
    outcome = ("reproduced" if ma > mb else "reversed") if w.significant else "not separable"
    p = "" if w.p is None else f", p={w.p:.3g}"
    return outcome, f"{head}: Welch t={w.t:.2f}, df={w.df:.1f}{p}: {outcome}"


def _overall(outcomes: list[str]) -> str:
    if "reversed" in outcomes:
        return "reversed"
    real = [o for o in outcomes if o != "no data"]
    if not real:
        return "no data"
    if all(o == "reproduced" for o in real):
        return "reproduced"
    if "reproduced" in real:
        return "partly reproduced (the rest not separable from seed noise)"
    if all(o == "one seed" for o in real):
        return "not separable (one seed)"
    return "not separable from seed noise"


def axis_verdicts(rows: list[Row]) -> list[Verdict]:
    """Per axis: the paper's best value against each other value (Welch's t-test, two-sided, ALPHA)."""
    out = []
    for axis in dict.fromkeys(r.axis for r in rows if r.axis not in ("base", "grid")):
        sub = {r.value: r for r in rows if r.axis == axis}
        best = paper_best(axis, list(sub))
        if best is None:
            out.append(Verdict(axis, None, "no paper reference for these values"))
            continue
        pairs = [_compare(sub[best], r) for v, r in sub.items() if v != best]
        if not pairs:
            out.append(Verdict(axis, best, "nothing to compare (one value)"))
            continue
        out.append(Verdict(axis, best, _overall([o for o, _ in pairs]), [d for _, d in pairs]))
    return out


def _fmt(x: float | None, nd: int = 2) -> str:
    return "—" if x is None else f"{x:.{nd}f}"


def _fmt_stat(st: Summary, nd: int = 2) -> str:
    """'m ± s' over seeds; the single value with one seed."""
    if st.mean is None:
        return "—"
    return _fmt(st.mean, nd) if st.n < 2 else f"{st.mean:.{nd}f} ± {st.std:.{nd}f}"


def _fmt_ci(st: Summary, nd: int = 2) -> str:
    return "—" if st.lo is None else f"[{st.lo:.{nd}f}, {st.hi:.{nd}f}]"


def table_rows(rows: list[Row]) -> list[list[str]]:
    out = []
    for r in rows:
        paper = PAPER.get((r.axis, r.value))
        lin, att = r.stat("linear_top1"), r.stat("attentive_top1")
        out.append(
            [
                r.axis,
                r.value,
                f"n={r.n}",
                _fmt_stat(r.stat("final_loss"), 4),
                _fmt_stat(lin),
                _fmt_ci(lin),
                _fmt_stat(att),
                _fmt_ci(att),
                _fmt_stat(r.stat("images_per_s"), 0),
                "—" if not paper else f"{_fmt(paper[0], 1)} / {paper[1]:.1f}",
            ]
        )
    return out


HEADER = [
    "axis",
    "value",
    "n",
    "final loss",
    "linear top-1",
    "linear 95% CI",
    "attentive top-1",
    "attentive 95% CI",
    "images/s",
    "paper lin / att",
]
VERDICT_HEADER = ["axis", "paper's best", "verdict", "comparisons"]


def verdict_rows(verdicts: list[Verdict]) -> list[list[str]]:
    return [[v.axis, v.best or "—", v.verdict, "; ".join(v.details) or "—"] for v in verdicts]


def to_markdown(title: str, rows: list[Row]) -> str:
    lines = [
        f"# {title}",
        "",
        "Mean ± std over seeds (n seeds); 95% CI: mean ± t(0.975, n-1)·std/sqrt(n).",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(rows)]
    lines += [
        "",
        "## Does the paper's direction hold?",
        "",
        TEST_NOTE,
        "",
        "| " + " | ".join(VERDICT_HEADER) + " |",
        "|" + "---|" * len(VERDICT_HEADER),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in verdict_rows(axis_verdicts(rows))]
    return "\n".join(lines) + "\n"


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def to_html(title: str, rows: list[Row], charts: list[str]) -> str:
    imgs = "".join(f'<img src="{html.escape(n)}" style="max-width:48%">' for n in charts)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        f"padding:4px 8px}}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<p>Mean ± std over seeds (n seeds); 95% CI: mean ± t(0.975, n-1)·std/sqrt(n).</p>"
        f"{_html_table(HEADER, table_rows(rows))}<h2>Does the paper's direction hold?</h2>"
        f"<p>{html.escape(TEST_NOTE)}</p>{_html_table(VERDICT_HEADER, verdict_rows(axis_verdicts(rows)))}"
        f"{imgs}</body></html>"
    )


def _charts(rows: list[Row], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    for axis in dict.fromkeys(r.axis for r in rows if r.axis not in ("base", "grid")):
        sub = [r for r in rows if r.axis == axis]
        fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(sub), 3.2))
        xs = range(len(sub))
        ax.bar(
            [x - 0.2 for x in xs],
            [r.linear_top1 or 0 for r in sub],
            0.4,
            label="linear",
            yerr=[r.stat("linear_top1").std or 0 for r in sub],
            capsize=3,
        )
        ax.bar(
            [x + 0.2 for x in xs],
            [r.attentive_top1 or 0 for r in sub],
            0.4,
            label="attentive",
            yerr=[r.stat("attentive_top1").std or 0 for r in sub],
            capsize=3,
        )
        ax.set_xticks(list(xs), [r.value for r in sub], rotation=20)
        ax.set_ylabel("top-1 (%), mean ± std over seeds")
        ax.set_title(f"axis: {axis}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        name = f"axis_{axis}.png"
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        names.append(name)
    return names


def _loss_charts(c, records: list[Row], rows: list[Row], out: Path) -> list[str]:
    """Overlaid loss curves per axis (grid sweeps: per cell) and loss against attentive top-1 per target."""
    names = []
    grid = any(r.axis == "grid" for r in records)
    for axis in ["grid"] if grid else dict.fromkeys(r.axis for r in records if r.axis != "base"):
        curves = charts.axis_curves(c, records, axis)
        if any(cv.steps for cv in curves):
            names.append(charts.loss_curve_chart(curves, axis, out / f"loss_{axis}.png").name)
    scatter = charts.loss_vs_attentive_chart(rows, out / "loss_vs_attentive.png")
    return names + ([scatter.name] if scatter else [])


def write_report(uri: str, name_or_id: str, out: Path, experiment: str | None = None) -> tuple[list[Row], Path]:
    """Write report.md / report.html / PNGs into `out` and log them on the sweep's parent run."""
    c = tracking.client(uri)
    parent = _find_parent(c, name_or_id, experiment)
    plan, records = _records(c, parent)
    rows = summarize_rows(records, grid=plan.get("mode") == "grid")
    title = f"AIM ablations: {c.get_run(parent).info.run_name}"
    out.mkdir(parents=True, exist_ok=True)
    names = _charts(rows, out) + _loss_charts(c, records, rows, out)
    (out / "report.md").write_text(to_markdown(title, rows))
    (out / "report.html").write_text(to_html(title, rows, names))
    for name in ["report.md", "report.html", *names]:
        c.log_artifact(parent, str(out / name), artifact_path="report")
    log_summary_metrics(c, parent, rows)
    return rows, out


def summary_metrics(rows: list[Row]) -> dict[str, float]:
    """The table's key numbers (means over seeds) as 'summary/<axis>:<value>:<metric>': one chart section."""
    out = {}
    for r in rows:
        for m in ("final_loss", "linear_top1", "attentive_top1"):
            v = getattr(r, m)
            if v is not None:
                out[re.sub(r"[^\w./: -]+", "_", f"summary/{r.axis}:{r.value}:{m}")] = float(v)
    return out


def log_summary_metrics(c, parent: str, rows: list[Row]) -> None:
    """Key numbers on the sweep's parent run (one batch; a rerun of the report logs them again)."""
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    items = [Metric(k, v, ts, 0) for k, v in summary_metrics(rows).items()]
    for i in range(0, len(items), 1000):
        c.log_batch(parent, metrics=items[i : i + 1000])
