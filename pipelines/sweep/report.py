"""`aimctl report`: the paper-style ablation table from MLflow (Markdown, HTML, PNG charts)."""

from __future__ import annotations

import html
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipelines import tracking

__all__ = ["Row", "collect_rows", "write_report", "PAPER"]

# The paper's AIM-0.6B ablations (linear / attentive top-1 on IN-1k), where the reference gives both.
PAPER: dict[tuple[str, str], tuple[float | None, float]] = {
    ("order", "raster"): (69.5, 77.4), ("order", "spiral"): (67.7, 76.3),
    ("order", "checkerboard"): (68.2, 76.0), ("order", "random"): (65.8, 75.7),
    ("crop_scale", "0.08"): (68.4, 77.7), ("crop_scale", "0.4"): (70.0, 78.2), ("crop_scale", "1.0"): (49.6, 63.5),
    ("head", "none"): (64.0, 75.4), ("head", "mlp"): (70.0, 78.2), ("head", "transformer"): (70.5, 78.5),
    ("head_width", "512"): (None, 77.7), ("head_width", "1024"): (None, 78.1), ("head_width", "2048"): (None, 78.2),
    ("head_depth", "6"): (None, 76.2), ("head_depth", "8"): (None, 77.1), ("head_depth", "12"): (None, 78.2),
}


@dataclass
class Row:
    axis: str
    value: str
    trial: str
    run_id: str | None
    final_loss: float | None
    linear_top1: float | None
    attentive_top1: float | None
    images_per_s: float | None
    assignments: dict[str, str] | None = None


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


def collect_rows(c, parent: str) -> list[Row]:
    """One row per (axis, value) of the plan; one-at-a-time values equal to the base reuse the base run."""
    plan = _plan(c, parent)
    children = c.search_runs([c.get_run(parent).info.experiment_id],
                             filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
    by_trial = {r.data.tags.get("trial"): r for r in children}
    rows = []
    for t in plan["trials"]:
        run = by_trial.get(t["duplicate_of"] or t["trial_id"])
        m = run.data.metrics if run else {}
        value = ", ".join(f"{a}={v}" for a, v in t.get("assignments", {}).items()) if t["axis"] == "grid" else t["value"]
        rows.append(Row(t["axis"], value, t["trial_id"], run.info.run_id if run else None,
                        m.get("train/loss"), m.get("probe/linear_top1"), m.get("probe/attentive_top1"),
                        _metric_mean(c, run.info.run_id, "train/images_per_s") if run else None,
                        t.get("assignments")))
    return _with_marginals(rows) if plan.get("mode") == "grid" else rows


def _mean(xs: list[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _with_marginals(rows: list[Row]) -> list[Row]:
    """Grid sweeps: per axis value, the mean over the other axes (what the paper-style table reads)."""
    out = []
    for axis in dict.fromkeys(a for r in rows for a in (r.assignments or {})):
        for value in dict.fromkeys((r.assignments or {}).get(axis) for r in rows if r.assignments):
            sub = [r for r in rows if (r.assignments or {}).get(axis) == value]
            out.append(Row(axis, value, f"mean of {len(sub)}", None, _mean([r.final_loss for r in sub]),
                           _mean([r.linear_top1 for r in sub]), _mean([r.attentive_top1 for r in sub]),
                           _mean([r.images_per_s for r in sub])))
    return out + rows


def _fmt(x: float | None, nd: int = 2) -> str:
    return "—" if x is None else f"{x:.{nd}f}"


def table_rows(rows: list[Row]) -> list[list[str]]:
    out = []
    for r in rows:
        paper = PAPER.get((r.axis, r.value))
        out.append([r.axis, r.value, _fmt(r.final_loss, 4), _fmt(r.linear_top1), _fmt(r.attentive_top1),
                    _fmt(r.images_per_s, 0), "—" if not paper else f"{_fmt(paper[0], 1)} / {paper[1]:.1f}"])
    return out


HEADER = ["axis", "value", "final loss", "linear top-1", "attentive top-1", "images/s", "paper lin / att"]


def to_markdown(title: str, rows: list[Row]) -> str:
    lines = [f"# {title}", "", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(rows)]
    return "\n".join(lines) + "\n"


def to_html(title: str, rows: list[Row], charts: list[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in HEADER)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in table_rows(rows))
    imgs = "".join(f'<img src="{html.escape(n)}" style="max-width:48%">' for n in charts)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
            f"padding:4px 8px}}</style></head><body><h1>{html.escape(title)}</h1><table><tr>{head}</tr>{body}"
            f"</table>{imgs}</body></html>")


def _charts(rows: list[Row], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    for axis in dict.fromkeys(r.axis for r in rows if r.axis not in ("base", "grid")):
        sub = [r for r in rows if r.axis == axis]
        fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(sub), 3.2))
        xs = range(len(sub))
        ax.bar([x - 0.2 for x in xs], [r.linear_top1 or 0 for r in sub], 0.4, label="linear")
        ax.bar([x + 0.2 for x in xs], [r.attentive_top1 or 0 for r in sub], 0.4, label="attentive")
        ax.set_xticks(list(xs), [r.value for r in sub], rotation=20)
        ax.set_ylabel("top-1 (%)")
        ax.set_title(f"axis: {axis}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        name = f"axis_{axis}.png"
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        names.append(name)
    pts = [r for r in rows if r.run_id and r.final_loss is not None and r.attentive_top1 is not None]
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    ax.scatter([r.final_loss for r in pts], [r.attentive_top1 for r in pts])
    for r in pts:
        ax.annotate(r.value if r.axis == "grid" else f"{r.axis}={r.value}", (r.final_loss, r.attentive_top1), fontsize=6)
    ax.set_xlabel("final pre-training loss")
    ax.set_ylabel("attentive top-1 (%)")
    fig.tight_layout()
    fig.savefig(out / "loss_vs_attentive.png", dpi=100)
    plt.close(fig)
    return names + ["loss_vs_attentive.png"]


def write_report(uri: str, name_or_id: str, out: Path, experiment: str | None = None) -> tuple[list[Row], Path]:
    """Write report.md / report.html / PNGs into `out` and log them on the sweep's parent run."""
    c = tracking.client(uri)
    parent = _find_parent(c, name_or_id, experiment)
    rows = collect_rows(c, parent)
    title = f"AIM ablations: {c.get_run(parent).info.run_name}"
    out.mkdir(parents=True, exist_ok=True)
    charts = _charts(rows, out)
    (out / "report.md").write_text(to_markdown(title, rows))
    (out / "report.html").write_text(to_html(title, rows, charts))
    for name in ["report.md", "report.html", *charts]:
        c.log_artifact(parent, str(out / name), artifact_path="report")
    return rows, out
