"""`aimctl sweep` and `aimctl report`."""

from __future__ import annotations

from pathlib import Path

import typer

from pipelines.cli_common import console, fail


def sweep(
    sweep_file: Path = typer.Argument(..., help="sweep YAML, e.g. experiments/ablations/cifar10-cpu.yaml"),
    resume: bool = typer.Option(False, "--resume", help="restore the sweep and finish unfinished/failed trials"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the trial table and resources; run nothing"),
    address: str = typer.Option(None, "--address", envvar="RAY_ADDRESS", help="Ray cluster address"),
    cluster_cpus: float = typer.Option(
        None, "--cluster-cpus", help="plan for this many CPUs (dry run; default: the cluster's)"
    ),
) -> None:
    """Run an ablation sweep on Ray Tune: pre-train + probe per trial, tracked as MLflow child runs."""
    from pipelines.config import ConfigError
    from pipelines.sweep.spec import load_sweep

    try:
        spec, trials = load_sweep(sweep_file)
    except ConfigError as e:
        fail(str(e))
    from pipelines.sweep.runner import plan_resources

    if cluster_cpus is None and dry_run:
        import os

        cluster_cpus = float(os.cpu_count() or 2)
    if not dry_run:  # always here, not inside Tune: a local cluster must start with this environment's credentials
        from pipelines.data.raytools import init_ray

        init_ray(address)
    if cluster_cpus is None:
        import ray

        cluster_cpus = float(ray.cluster_resources().get("CPU", 1))
    plan = plan_resources(spec, trials, cluster_cpus)
    _print_plan(spec, trials, plan)
    if dry_run:
        return
    from pipelines.sweep.runner import run_sweep

    results, uri, parent = run_sweep(spec, plan, resume=resume)
    errors = len(results.errors)
    console.print(
        f"[green]sweep[/] {spec.name}: {len(results) - errors} trial(s) done, {errors} failed; "
        f"parent MLflow run {parent}. Next: aimctl report {spec.name}",
        highlight=False,
    )
    if errors:
        raise typer.Exit(1)


def _print_plan(spec, trials, plan) -> None:
    from rich.table import Table

    seeds = spec.seeds or [trials[0].seed]
    t = Table(
        title=f"sweep {spec.name} ({spec.mode}): {len(plan.trials)} trial(s) to run "
        f"({len(seeds)} seed(s): {', '.join(map(str, seeds))}; {len(trials)} planned), "
        f"{plan.max_concurrent} at a time on {plan.cluster_cpus:g} CPUs"
    )
    for col in ("trial", "axis", "value", "seed", "run name", "steps", "note"):
        t.add_column(col, overflow="fold")
    for tr in trials:
        note = f"same as {tr.duplicate_of}" if tr.duplicate_of else ""
        t.add_row(tr.trial_id, tr.axis, tr.value, str(tr.seed), tr.config.name, str(tr.config.schedule.steps), note)
    console.print(t)
    if spec.search is not None:
        sch = spec.search.scheduler
        how = (
            "FIFO (every trial runs to the end)"
            if sch.name == "fifo"
            else (f"ASHA on train/loss by step (grace {sch.grace_period}, reduction factor {sch.reduction_factor:g})")
        )
        console.print(f"search: {spec.search.num_samples} sample(s) (seed {spec.search.seed}); scheduler: {how}")
    console.print(
        f"resources per trial: driver {plan.cpus_per_trial:g} CPU + {plan.workers_per_trial} worker(s) x "
        f"{plan.cpus_per_worker:g} CPU; max_concurrent_trials={plan.max_concurrent}",
        highlight=False,
    )


def report(
    sweep: str = typer.Argument(..., help="sweep name or the parent MLflow run id"),
    out: Path = typer.Option(None, "--out", help="output directory (default reports/<sweep>)"),
    tracking_uri: str = typer.Option(None, "--tracking-uri", envvar="MLFLOW_TRACKING_URI", help="MLflow URI"),
    experiment: str = typer.Option(None, "--experiment", help="MLflow experiment to search (default: all)"),
) -> None:
    """Write the paper-style ablation table (Markdown + HTML) and charts; log them on the sweep's run."""
    from rich.table import Table

    from pipelines import tracking
    from pipelines.sweep.report import (
        HEADER,
        TEST_NOTE,
        VERDICT_HEADER,
        axis_verdicts,
        table_rows,
        verdict_rows,
        write_report,
    )

    uri = tracking.resolve_tracking_uri(tracking_uri)
    try:
        rows, where = write_report(uri, sweep, out or Path("reports") / sweep, experiment)
    except LookupError as e:
        fail(str(e), code=1)
    t = Table(title=f"ablations: {sweep}")
    for h in HEADER:
        t.add_column(h)
    for r in table_rows(rows):
        t.add_row(*r)
    console.print(t)
    v = Table(title="does the paper's direction hold? (attentive top-1, Welch's t-test, two-sided, alpha 0.05)")
    for h in VERDICT_HEADER:
        v.add_column(h, overflow="fold")
    for r in verdict_rows(axis_verdicts(rows)):
        v.add_row(*r)
    console.print(v)
    console.print(TEST_NOTE, highlight=False)
    console.print(
        f"report: {where / 'report.html'} (and report.md, PNG charts)\n"
        f"browse runs: mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000",
        highlight=False,
    )
