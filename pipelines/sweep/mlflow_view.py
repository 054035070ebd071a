"""What MLflow 3.17's UI needs to open a sweep on its training runs, grouped for comparison.

- The experiment is tagged `mlflow.experimentKind = custom_model_development` (pipelines.tracking does it
  when it creates the experiment). Without the tag MLflow 3.17 opens a new experiment on its GenAI overview.
- Each sweep writes *shared views*: experiment tags `mlflow.sharedViewState.<key>` holding the UI state as
  JSON, which the UI loads from `#/experiments/<id>/runs?viewStateShareKey=<key>&compareRunsMode=CHART`
  (what its own "Share" button writes). `workflowType=machine_learning` sets the UI's GenAI / Model
  training toggle (remembered per browser, GenAI by default) to Model training.
- One view for the whole sweep (grouped by the `axis` and `value` params) and one per axis (its runs and
  the base run, grouped by `value`). A group's line is the mean over the seeds, with a min-max band.
  Without grouping, child runs sit collapsed under the parent run and the chart view shows the parent alone.
- Trials carry the tag `aim.in_axes` (",target," for a one-at-a-time value; every axis for the base run
  and for grid trials), so a per-axis view can include the base run with a LIKE filter (MLflow's search has
  no OR or IN).
"""

from __future__ import annotations

import hashlib
import json

__all__ = [
    "EXPERIMENT_KIND_TAG",
    "TRAINING_KIND",
    "IN_AXES_TAG",
    "SHARED_VIEW_PREFIX",
    "in_axes_tag",
    "view_state",
    "view_key",
    "write_sweep_views",
    "view_url",
    "views_markdown",
]

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"
IN_AXES_TAG = "aim.in_axes"
SHARED_VIEW_PREFIX = "mlflow.sharedViewState."


def in_axes_tag(axis: str, all_axes: list[str]) -> str:
    """',a,b,' : the axes whose comparison a trial belongs to (the base and grid trials: all of them)."""
    axes = all_axes if axis in ("base", "grid") else [axis]
    return "," + ",".join(axes) + ","


def _param(name: str) -> dict:
    return {"mode": "param", "groupByData": name}


def view_state(sweep: str, axis: str | None, parent_run_id: str | None = None) -> dict:
    """The UI state of one view: a search filter, a group-by, every trial shown (the parent run, which the UI
    adds for nesting, hidden: its summary metrics are not curves) and charts of grouped values. A per-axis
    view shows the train/loss chart only (the chart search box, which the user can clear)."""
    hidden = [parent_run_id] if parent_run_id else []
    filt = f"tags.sweep = '{sweep}' AND tags.trial IS NOT NULL"
    keys = [_param("axis"), _param("value")]
    if axis is not None:
        filt = f"tags.sweep = '{sweep}' AND tags.`{IN_AXES_TAG}` LIKE '%,{axis},%'"
        keys = [_param("value")]
    return {
        "searchFilter": filt,
        "orderByKey": "attributes.start_time",
        "orderByAsc": True,
        "groupBy": {"aggregateFunction": "average", "groupByKeys": keys},
        "groupsExpanded": {},
        "useGroupedValuesInCharts": True,
        "runsHiddenMode": "SHOW_ALL",
        "runsHidden": hidden,
        "runsVisibilityMap": {r: False for r in hidden},
        "hideEmptyCharts": True,
        "chartsSearchFilter": "" if axis is None else "train/loss",
    }


def view_key(sweep: str, axis: str | None) -> str:
    """Stable per (sweep, axis): a rerun overwrites its views instead of adding new ones."""
    return hashlib.sha1(f"aim-sweep:{sweep}:{axis or ''}".encode()).hexdigest()[:16]


def write_sweep_views(
    c, experiment_id: str, sweep: str, axes: list[str], parent_run_id: str | None = None
) -> dict[str, str]:
    """Set the sweep's shared views on its experiment. Returns {'all' | axis: share key}."""
    keys = {}
    for axis in [None, *axes]:
        key = view_key(sweep, axis)
        state = json.dumps(view_state(sweep, axis, parent_run_id))
        c.set_experiment_tag(experiment_id, SHARED_VIEW_PREFIX + key, state)
        keys[axis or "all"] = key
    return keys


def view_url(base_url: str, experiment_id: str, key: str) -> str:
    """The chart view of one shared view, under an MLflow server's base URL."""
    query = f"viewStateShareKey={key}&compareRunsMode=CHART&workflowType=machine_learning"
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"


def views_markdown(experiment_id: str, keys: dict[str, str], base_url: str = "") -> str:
    """Links to the views (relative to the MLflow UI when `base_url` is empty), for the parent run's note."""
    lines = ["Compare the trials in MLflow's chart view (lines: mean over seeds; bands: min-max):", ""]
    for name, key in keys.items():
        label = "all trials, grouped by axis and value" if name == "all" else f"axis `{name}` (with the base run)"
        url = view_url(base_url, experiment_id, key) if base_url else view_url("", experiment_id, key).lstrip("/")
        lines.append(f"- [{label}]({url})")
    return "\n".join(lines) + "\n"
