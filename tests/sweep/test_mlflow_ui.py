"""MLflow's UI over a real finished sweep: the experiment kind, the shared chart views, a real browser."""

from __future__ import annotations

import json

import pytest
import yaml

from pipelines import tracking
from pipelines.sweep import mlflow_view
from pipelines.sweep.spec import load_sweep
from tests.conftest import experiment


def _spec(demo, tmp_path, seeds: list[int]) -> dict:
    base = experiment(
        demo,
        tmp_path,
        "unused",
        schedule={"steps": 8},
        storage={"checkpoint_every": 8},
        scaling={"num_workers": 0, "cpus_per_worker": 0.25},
        probe={"epochs": 3, "batch_size": 64, "lr": 3e-3},
    )
    base.pop("name")
    axes = {"target": {"norm_pixel": {"target.name": "norm_pixel"}, "pixel": {"target.name": "pixel"}}}
    return {"name": "ui", "experiment": base, "seeds": seeds, "axes": axes, "resources": {"cpus_per_trial": 0.25}}


def test_trials_carry_the_axes_they_are_compared_in(demo_data, tmp_path):
    spec = _spec(demo_data, tmp_path, [0])
    spec["axes"]["order"] = {"spiral": {"model.order": "spiral"}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    _, trials = load_sweep(tmp_path / "s.yaml")
    got = {t.trial_id: t.config.tags[mlflow_view.IN_AXES_TAG] for t in trials}
    assert got == {
        "base": ",order,target,",  # yaml.safe_dump sorts the axes
        "target=norm_pixel": ",target,",
        "target=pixel": ",target,",
        "order=spiral": ",order,",
    }


def test_views_are_experiment_tags_the_ui_can_load(tmp_path):
    c = tracking.client(f"sqlite:///{tmp_path / 'm.db'}")
    exp_id = tracking._experiment_id(c, "e")
    assert c.get_experiment(exp_id).tags[mlflow_view.EXPERIMENT_KIND_TAG] == mlflow_view.TRAINING_KIND
    keys = mlflow_view.write_sweep_views(c, exp_id, "s", ["target"])
    assert mlflow_view.write_sweep_views(c, exp_id, "s", ["target"]) == keys, "a rerun rewrites the same views"
    tags = c.get_experiment(exp_id).tags
    state = json.loads(tags[mlflow_view.SHARED_VIEW_PREFIX + keys["target"]])
    assert state["groupBy"]["groupByKeys"] == [{"mode": "param", "groupByData": "value"}]
    assert "LIKE '%,target,%'" in state["searchFilter"]
    # the filters are valid MLflow searches: the per-axis one finds a run of that axis and not the others
    r1 = c.create_run(exp_id, tags={"sweep": "s", "trial": "t", mlflow_view.IN_AXES_TAG: ",target,"})
    c.create_run(exp_id, tags={"sweep": "s", "trial": "u", mlflow_view.IN_AXES_TAG: ",order,"})
    found = c.search_runs([exp_id], filter_string=state["searchFilter"])
    assert [r.info.run_id for r in found] == [r1.info.run_id]
    everything = json.loads(tags[mlflow_view.SHARED_VIEW_PREFIX + keys["all"]])["searchFilter"]
    assert len(c.search_runs([exp_id], filter_string=everything)) == 2
    url = mlflow_view.view_url("http://h:1", exp_id, keys["all"])
    assert url.endswith(f"viewStateShareKey={keys['all']}&compareRunsMode=CHART&workflowType=machine_learning")


@pytest.mark.ray
@pytest.mark.browser
def test_sweep_in_mlflow_ui_with_a_real_browser(ray_local, demo_data, tmp_path):
    """A real 2-seed sweep, its report, a real `mlflow server` and headless Chromium: the experiment opens on
    its runs; the target axis's chart view lists every run, one group per value, and a grouped loss chart."""
    from pipelines.sweep import ui_check
    from pipelines.sweep.report import write_report
    from pipelines.sweep.runner import plan_resources, run_sweep

    browser = ui_check.find_browser()
    if browser is None:
        pytest.skip("no Chromium installed (scripts/install_browser.sh installs one)")
    (tmp_path / "ui.yaml").write_text(yaml.safe_dump(_spec(demo_data, tmp_path, [0, 1])))
    spec, trials = load_sweep(tmp_path / "ui.yaml")
    results, uri, parent = run_sweep(spec, plan_resources(spec, trials, 2.0))
    assert not results.errors
    write_report(uri, "ui", tmp_path / "report")
    metrics = tracking.client(uri).get_run(parent).data.metrics
    assert "summary/target:pixel:attentive_top1" in metrics, sorted(metrics)
    res = ui_check.check_sweep(uri, "ui", browser, "target", tmp_path / "shot.png")
    assert res.ok, "\n".join(res.problems)
    assert (tmp_path / "shot.png").stat().st_size > 10_000
