"""`aimctl sweep`: one Ray Tune function trial per planned experiment: pre-train (a TorchTrainer), then probe.

MLflow: one parent run per sweep and one child per trial, both found again by key on a rerun, so a
resumed sweep never duplicates runs. `--resume` restores the Tuner and finishes only what is unfinished.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipelines import tracking
from pipelines.sweep import mlflow_view
from pipelines.sweep.search import make_scheduler
from pipelines.sweep.spec import SweepSpec, Trial

__all__ = ["SweepPlan", "plan_resources", "open_parent_run", "run_sweep"]


@dataclass
class SweepPlan:
    trials: list[Trial]  # the ones that run (duplicates of the base excluded)
    cpus_per_trial: float
    cpus_per_worker: float
    workers_per_trial: int
    max_concurrent: int
    cluster_cpus: float
    all_trials: list[Trial]  # including one-at-a-time values identical to the base (reported, not run)


def plan_resources(spec: SweepSpec, trials: list[Trial], cluster_cpus: float) -> SweepPlan:
    """Concurrency from the cluster. A running trial holds its driver CPU, its workers' CPUs (one worker's
    when it trains in-process), and needs room for one task of each stage of its Ray Data pipeline (fused:
    one read+decode task; else one read and one decode task); trials beyond that would starve (and on 2 CPUs
    deadlock), so they queue."""
    runnable = [t for t in trials if t.duplicate_of is None]
    cfg = runnable[0].config
    sc, d = cfg.scaling, cfg.data.decode
    per_trial = spec.resources.cpus_per_trial + max(sc.num_workers, 1) * sc.cpus_per_worker
    per_trial += d.num_cpus if d.compute == "fused" else d.read_num_cpus + d.num_cpus
    fit = max(1, int(math.floor(cluster_cpus / per_trial + 1e-9)))
    # An explicit limit wins: on an autoscaling cluster the resources are not there yet when planning.
    limit = spec.resources.max_concurrent_trials or fit
    return SweepPlan(
        runnable,
        spec.resources.cpus_per_trial,
        sc.cpus_per_worker,
        sc.num_workers,
        max(1, min(limit, len(runnable))),
        cluster_cpus,
        trials,
    )


def open_parent_run(spec: SweepSpec, trials: list[Trial]) -> tuple[str, str]:
    cfg = trials[0].config
    uri = tracking.resolve_tracking_uri(cfg.tracking.uri)
    c = tracking.client(uri)
    run_id, _ = tracking.get_or_create_run(
        c,
        cfg.tracking.experiment,
        f"sweep:{spec.name}",
        spec.name,
        {"sweep": spec.name, "aim.kind": "sweep", "mode": spec.mode},
    )
    params = {"sweep.mode": spec.mode, "sweep.trials": len(trials), "sweep.axes": ",".join(spec.axes)}
    if spec.seeds:
        params["sweep.seeds"] = ",".join(str(x) for x in spec.seeds)
    tracking.log_params(c, run_id, params)
    plan = {
        "sweep": spec.name,
        "mode": spec.mode,
        "trials": [
            {
                "trial_id": t.trial_id,
                "axis": t.axis,
                "value": t.value,
                "duplicate_of": t.duplicate_of,
                "assignments": t.assignments,
                "seed": t.seed,
                "run_name": t.config.name,
                "overrides": t.overrides,
            }
            for t in trials
        ],
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "plan.json"
        path.write_text(json.dumps(plan, indent=1))
        c.log_artifact(run_id, str(path))
    _write_views(c, spec, run_id)
    return uri, run_id


def _write_views(c, spec: SweepSpec, run_id: str) -> None:
    """MLflow chart views of the sweep (experiment tags) and links to them in the parent run's note."""
    exp_id = c.get_run(run_id).info.experiment_id
    keys = mlflow_view.write_sweep_views(c, exp_id, spec.name, list(spec.axes), run_id)
    c.set_tag(run_id, "mlflow.note.content", mlflow_view.views_markdown(exp_id, keys))


def _run_trial(trial: Trial, parent_run_id: str, selections: dict) -> dict:
    """Pre-train (a TorchTrainer; resumes from the trial's own checkpoints) and probe one trial."""
    from pipelines.data.pipeline import use_selections
    from pipelines.probe_runner import probe_checkpoint
    from pipelines.train.driver import pretrain

    use_selections(selections)  # the sweep driver scanned the pool once for every trial

    tags = {
        "sweep": trial.config.tags.get("sweep", ""),
        "axis": trial.axis,
        "value": trial.value,
        "trial": trial.trial_id,
        "seed": str(trial.seed),
    }
    res = pretrain(trial.config, parent_run_id=parent_run_id, extra_tags=tags, show_progress=False)
    _log_trial_params(trial, res.run_id)
    out = {"step": res.step, "run_id": res.run_id}
    if trial.config.probe.enabled:
        probes = probe_checkpoint(trial.config, None)
        out.update({"probe/attentive_top1": probes.attentive_top1, "probe/linear_top1": probes.linear_top1})
    return out


def _log_trial_params(trial: Trial, run_id: str | None) -> None:
    """`axis`, `value` and `seed` as params of the child run, so MLflow's chart view can group by them
    (`seed` is already there from the config; logging params is idempotent)."""
    if run_id is None or not trial.config.tracking.enabled:
        return
    c = tracking.client(tracking.resolve_tracking_uri(trial.config.tracking.uri))
    tracking.log_params(c, run_id, {"axis": trial.axis, "value": trial.value, "seed": trial.seed})


def _trainable(
    config: dict, trials: dict, parent_run_id: str, driver_resources: dict[str, float], selections: dict
) -> None:
    """Tune function trainable. Tune's trial placement group captures child tasks, which would squeeze the
    trial's Ray Data and Train work into the driver's small bundle; the trial's work therefore runs in a
    task scheduled outside the group (it dies with this trial, by Ray's ownership rules)."""
    import ray
    import ray.tune
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    escape = PlacementGroupSchedulingStrategy(placement_group=None)
    trial = trials[config["trial_id"]]
    sc = trial.config.scaling
    # num_workers 0 trains inside this task (Ray Train local mode), so it holds the one worker's resources
    cpus = sc.cpus_per_worker if sc.num_workers == 0 else 0
    gpus = sc.gpus_per_worker if sc.num_workers == 0 and sc.use_gpu else 0
    task = ray.remote(_run_trial).options(
        num_cpus=cpus, num_gpus=gpus, max_retries=0, scheduling_strategy=escape, resources=driver_resources
    )
    ref = task.remote(trial, parent_run_id, selections)
    try:
        last = report_progress(ref, trial, parent_run_id)
        out = ray.get(ref)
    except BaseException:  # stopped by Tune's scheduler (its report raises SystemExit), or failed
        # the training task runs outside this trial's placement group: without this it keeps training
        ray.cancel(ref, force=True)
        _close_killed_run(trial, parent_run_id)
        raise
    ray.tune.report({**last, **_final_metrics(trial, out.get("run_id")), **out})


def _close_killed_run(trial: Trial, parent_run_id: str) -> None:
    """The child run of a trial whose task was just cancelled: KILLED (it would stay RUNNING)."""
    if not trial.config.tracking.enabled:
        return
    try:
        _mark_killed(tracking.client(tracking.resolve_tracking_uri(trial.config.tracking.uri)), trial, parent_run_id)
    except Exception:  # noqa: BLE001 - best effort: the sweep's end closes what is left (_close_stopped_runs)
        pass


def _mark_killed(c, trial: Trial, parent_run_id: str) -> None:
    """The trial's child run KILLED, if it is left RUNNING or FAILED (a stopped or cancelled training)."""
    run_id = _child_run_id(c, trial, parent_run_id)
    if run_id and c.get_run(run_id).info.status in ("RUNNING", "FAILED"):
        c.set_terminated(run_id, status="KILLED")


def _final_metrics(trial: Trial, run_id: str | None) -> dict[str, float]:
    """The child run's last logged loss and rate (the polls may have missed the last steps)."""
    if run_id is None or not trial.config.tracking.enabled:
        return {}
    m = tracking.client(tracking.resolve_tracking_uri(trial.config.tracking.uri)).get_run(run_id).data.metrics
    return _progress_metrics(m) if "train/step" in m else {}


def _progress_metrics(m: dict[str, float]) -> dict[str, float]:
    return {
        "step": int(m["train/step"]),
        "train/loss": m.get("train/loss", float("nan")),
        "train/images_per_s": m.get("train/images_per_s", float("nan")),
    }


def report_progress(ref, trial: Trial, parent_run_id: str, every: float = 0.5, slow: float = 2.0) -> dict[str, float]:
    """Until the trial's task finishes: report each new step of its child run's MLflow metrics (rank 0 logs
    them, in-process or from a worker group alike) to Tune, for its progress table and schedulers (ASHA).
    Polls every `every` seconds for the first 10 s (short trials finish between slower polls), then every
    `slow` seconds (each poll is an MLflow query in this process, beside two trainings on a small machine).
    Returns the last metrics reported (empty without tracking: then Tune sees only the final result)."""
    import time

    import ray
    import ray.tune

    cfg, last = trial.config, {}
    if not cfg.tracking.enabled:
        return last
    c = tracking.client(tracking.resolve_tracking_uri(cfg.tracking.uri))
    run_id, step, t0 = None, -1, time.monotonic()
    while not ray.wait([ref], timeout=every if time.monotonic() - t0 < 10 else slow)[0]:
        try:
            run_id = run_id or _child_run_id(c, trial, parent_run_id)
            m = c.get_run(run_id).data.metrics if run_id else {}
        except Exception:  # noqa: BLE001 - progress is best effort; the final result still comes
            continue
        # the last step comes with the final result: at max_t ASHA would stop the trial before its probes
        if step < int(m.get("train/step", -1)) < cfg.schedule.steps:
            last = _progress_metrics(m)
            step = last["step"]
            ray.tune.report(last)
    return last


def _child_run_id(c, trial: Trial, parent_run_id: str) -> str | None:
    exp = c.get_run(parent_run_id).info.experiment_id
    filt = f"tags.`mlflow.parentRunId` = '{parent_run_id}' AND tags.trial = '{trial.trial_id}'"
    found = c.search_runs([exp], filter_string=filt, max_results=1)
    return found[0].info.run_id if found else None


def _close_stopped_runs(results, trials: dict, uri: str, parent: str) -> None:
    """Trials a scheduler stopped early (no final result) leave their child run RUNNING, or FAILED (the
    driver saw its task cancelled): mark it KILLED."""
    c = tracking.client(uri)
    for r in results:
        tid = (r.config or {}).get("trial_id")
        if tid in trials and r.error is None and "run_id" not in (r.metrics or {}):
            _mark_killed(c, trials[tid], parent)


def _with_tracking_uri(trial: Trial, uri: str) -> Trial:
    """The trial with the sweep's resolved tracking URI: an unset one means <cwd>/mlflow.db of *this*
    process, and Tune runs each trial's actor in the trial's own directory (its progress polls and final
    read would open another, empty store there)."""
    if not trial.config.tracking.enabled or trial.config.tracking.uri == uri:
        return trial
    tracking_section = trial.config.tracking.model_copy(update={"uri": uri})
    return dataclasses.replace(trial, config=trial.config.model_copy(update={"tracking": tracking_section}))


def run_sweep(spec: SweepSpec, plan: SweepPlan, resume: bool = False):
    """Fit (or restore and finish) the Tuner. Returns the ResultGrid."""
    from concurrent.futures import ThreadPoolExecutor

    import ray
    import ray.tune
    from ray import tune

    from pipelines.data.pipeline import compute_selections
    from pipelines.train.checkpoint import run_storage

    # the parent run (MLflow) and the pool selection (Ray Data) do not depend on each other: overlap them
    with ThreadPoolExecutor(1, thread_name_prefix="parent-run") as pool:
        opening = pool.submit(open_parent_run, spec, plan.all_trials)
        selections = compute_selections([t.config.data for t in plan.trials])
        uri, parent = opening.result()

    fs, root = run_storage(plan.trials[0].config)
    trials = {t.trial_id: _with_tracking_uri(t, uri) for t in plan.trials}
    # Clusters from infra/ advertise TRAIN_DRIVER on the on-demand head only: trial drivers go there, never
    # onto spot GPU nodes whose reclaim would kill them.
    from pipelines.submit import DRIVER_RESOURCE

    driver = {DRIVER_RESOURCE: 0.01} if ray.cluster_resources().get(DRIVER_RESOURCE) else {}
    trainable = tune.with_resources(
        tune.with_parameters(
            _trainable, trials=trials, parent_run_id=parent, driver_resources=driver, selections=selections
        ),
        tune.PlacementGroupFactory([{"CPU": plan.cpus_per_trial, **driver}]),
    )
    path = f"{root.rstrip('/')}/sweeps/{spec.name}"
    if resume and ray.tune.Tuner.can_restore(path, storage_filesystem=fs):
        tuner = ray.tune.Tuner.restore(
            path, trainable, resume_unfinished=True, resume_errored=True, restart_errored=False, storage_filesystem=fs
        )
    else:
        tuner = ray.tune.Tuner(
            trainable,
            param_space={"trial_id": tune.grid_search(list(trials))},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=plan.max_concurrent,
                reuse_actors=True,
                scheduler=make_scheduler(spec.search, max(t.config.schedule.steps for t in plan.trials)),
            ),
            run_config=ray.tune.RunConfig(
                name=f"{spec.name}",
                storage_path=f"{root.rstrip('/')}/sweeps",
                storage_filesystem=fs,
                verbose=1,
                failure_config=ray.tune.FailureConfig(max_failures=1),
            ),
        )
    from pipelines.storage import credentials_hidden_from_ray

    with credentials_hidden_from_ray():  # else Tune puts them in every trial's runtime_env (dashboard, State API)
        results = tuner.fit()
    _close_stopped_runs(results, trials, uri, parent)
    tracking.client(uri).set_terminated(parent, status="FINISHED" if not results.errors else "FAILED")
    return results, uri, parent
