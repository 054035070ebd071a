"""`mode: search`: typed ranges with load-time errors, seeded sampling, ASHA on losses reported as trials train."""

from __future__ import annotations

import time

import pytest
import yaml

from pipelines.config import ConfigError
from pipelines.sweep.search import make_scheduler
from pipelines.sweep.spec import load_sweep
from tests.conftest import experiment

PARAMS = {
    "optim.lr": {"distribution": "log_uniform", "low": 1e-3, "high": 1e-1},
    "optim.weight_decay": {"distribution": "uniform", "low": 0.0, "high": 0.1},
}


def _write(tmp_path, base: dict, **spec) -> object:
    data = {"name": "srch", "experiment": base, "mode": "search", **spec}
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _base(tmp_path) -> dict:
    return {
        "seed": 0,
        "model": {"preset": "aim-test"},
        "data": {"pool": {"uri": str(tmp_path / "pool")}, "curated": {"uri": str(tmp_path / "curated")}},
    }


def test_samples_are_seeded_in_range_and_applied(tmp_path):
    path = _write(tmp_path, _base(tmp_path), search={"num_samples": 4, "seed": 3, "params": PARAMS})
    spec, trials = load_sweep(path)
    assert [t.trial_id for t in trials] == [f"sample={i:02d}" for i in range(4)]
    assert all(1e-3 <= t.config.optim.lr <= 1e-1 and 0 <= t.config.optim.weight_decay <= 0.1 for t in trials)
    assert len({t.config.optim.lr for t in trials}) == 4 and trials[0].value.startswith("lr=")
    _, again = load_sweep(path)
    assert [t.config.optim.lr for t in again] == [t.config.optim.lr for t in trials], "a replan draws the same"
    sch = make_scheduler(spec.search, 100)
    assert type(sch).__name__ == "AsyncHyperBandScheduler" and sch._time_attr == "step"
    assert type(make_scheduler(None, 100)).__name__ == "FIFOScheduler"


@pytest.mark.parametrize(
    "spec, message",
    [
        (
            {"search": {"num_samples": 2, "params": {"optim.lr": {"distribution": "uniform", "low": 1, "high": 1}}}},
            "search.params.optim.lr: low (1) must be below high (1)",
        ),
        (
            {
                "search": {
                    "num_samples": 2,
                    "params": {"optim.lr": {"distribution": "log_uniform", "low": 0, "high": 1}},
                }
            },
            "search.params.optim.lr: log_uniform needs low > 0",
        ),
        (
            {"search": {"num_samples": 2, "params": {"optim.lr": {"distribution": "normal", "low": 0, "high": 1}}}},
            "search.params.optim.lr.distribution",
        ),
        ({"search": {"num_samples": 0, "params": PARAMS}}, "search.num_samples"),
        ({"search": {"num_samples": 2, "params": {}}}, "search.params"),
        (
            {"search": {"num_samples": 2, "params": PARAMS, "scheduler": {"name": "asha", "grace": 3}}},
            "search.scheduler.grace: unknown key",
        ),
        ({}, "mode: search needs a `search:` section"),
        (
            {"search": {"num_samples": 2, "params": PARAMS}, "axes": {"t": {"a": {"target.name": "pixel"}}}},
            "give no `axes`",
        ),
        ({"search": {"num_samples": 2, "params": {"optim.lrr": PARAMS["optim.lr"]}}}, "optim.lrr"),
    ],
)
def test_bad_search_specs_fail_at_load_naming_the_field(tmp_path, spec, message):
    with pytest.raises(ConfigError, match=None) as e:
        load_sweep(_write(tmp_path, _base(tmp_path), **spec))
    assert message in str(e.value), str(e.value)


def test_search_section_outside_search_mode_is_an_error(tmp_path):
    path = _write(tmp_path, _base(tmp_path), search={"num_samples": 2, "params": PARAMS})
    data = yaml.safe_load(path.read_text())
    data.update(mode="grid", axes={"t": {"a": {"target.name": "pixel"}}})
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="`search:` is for mode: search"):
        load_sweep(path)


@pytest.mark.ray
def test_search_sweep_reports_progress_to_tune_and_asha_decides(ray_local, demo_data, tmp_path):
    """3 samples, 240 steps, ASHA (grace 4): trials report their loss to Tune while they train (rising steps,
    more results than trials), trials ASHA stops are KILLED in MLflow and stop training there (their task
    is cancelled: it used to train on to the end beside the next trials), the rest FINISHED; none RUNNING.
    (Progress is polled from MLflow every 0.5 s for 10 s, then 2 s: 16-step trials finished between polls.)"""
    from pipelines import tracking
    from pipelines.sweep.runner import plan_resources, run_sweep

    base = experiment(
        demo_data,
        tmp_path,
        "unused",
        schedule={"steps": 240},
        storage={"checkpoint_every": 120},
        scaling={"num_workers": 0, "cpus_per_worker": 0.25},
        probe={"epochs": 2, "batch_size": 64, "lr": 3e-3},
    )
    base.pop("name")
    search = {"num_samples": 3, "params": PARAMS, "scheduler": {"grace_period": 4, "reduction_factor": 2}}
    spec, trials = load_sweep(_write(tmp_path, base, search=search, resources={"cpus_per_trial": 0.25}))
    results, uri, parent = run_sweep(spec, plan_resources(spec, trials, 2.0))
    assert not results.errors
    steps = [list(r.metrics_dataframe["step"]) for r in results]
    assert all(s == sorted(s) for s in steps), steps
    assert sum(map(len, steps)) > len(steps), f"no intermediate reports reached Tune: {steps}"
    assert all("train/loss" in r.metrics_dataframe.columns for r in results)
    c = tracking.client(uri)
    kids = c.search_runs([c.get_run(parent).info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'")
    status = {k.data.tags["trial"]: k.info.status for k in kids}
    assert len(status) == 3 and set(status.values()) <= {"FINISHED", "KILLED"}, status
    last = {k.data.tags["trial"]: k.data.metrics.get("train/step") for k in kids}
    for r in results:  # a trial ASHA stopped has no final result (no run_id): its run is KILLED, short of the end
        tid = r.config["trial_id"]
        if "run_id" in r.metrics:
            assert status[tid] == "FINISHED" and last[tid] == 240, (r.config, status, last)
        else:
            assert status[tid] == "KILLED" and last[tid] < 240, (r.config, r.metrics.get("step"), status, last)
    assert any("run_id" in r.metrics for r in results), "at least the best trial runs to the end"
    time.sleep(3)  # a stopped trial's training is gone, not running on in the background
    for k in kids:
        if status[k.data.tags["trial"]] == "KILLED":
            now = c.get_run(k.info.run_id)
            assert now.info.status == "KILLED" and now.data.metrics.get("train/step") == last[k.data.tags["trial"]]
    for r in results:
        if "run_id" in r.metrics:  # the final result carries the run's last logged loss
            assert r.metrics["train/loss"] == c.get_run(r.metrics["run_id"]).data.metrics["train/loss"]
