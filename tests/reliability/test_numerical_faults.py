"""Numerical faults: a NaN loss stops the run with one clear line (the step, the last good checkpoint) and no
checkpoint is written after it, even when checkpoint_every is not a multiple of log_every.

The NaN is injected with a loop hook (`fault_hooks.NanAtStep`, a `pipelines.train.loop.LoopHooks`): the loss of
that step is multiplied by NaN before backward, so the gradients and the weights after the update are NaN too,
exactly what a diverging run produces. The run goes through the real `aimctl pretrain` code (typer's runner, in
this process, on the session's local Ray); `cli_pretrain_hooks` hands the hook to `pretrain` for that call."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from fault_hooks import NanAtStep
from reliability_helpers import checkpoint_steps, cli_pretrain_hooks

from pipelines import tracking
from tests.conftest import experiment

pytestmark = [pytest.mark.reliability, pytest.mark.ray]

NAN_AT, CKPT_EVERY, LOG_EVERY = 5, 3, 4  # checkpoints at 3, 6, ...; logs at 4, 8, ...: step 6 is a checkpoint


@pytest.fixture(scope="module")
def nan_run(ray_local, demo_data, tmp_path_factory):
    from typer.testing import CliRunner

    from pipelines.cli import app

    tmp = tmp_path_factory.mktemp("nan")
    exp = experiment(
        demo_data,
        tmp,
        "nan-run",
        schedule={"steps": 12},
        storage={"checkpoint_every": CKPT_EVERY, "keep": 5},
        tracking={"log_every": LOG_EVERY},
    )
    path = tmp / "nan.yaml"
    path.write_text(yaml.safe_dump(exp))
    with cli_pretrain_hooks(NanAtStep(NAN_AT)):
        result = CliRunner().invoke(app, ["pretrain", str(path)])
    return exp, result, Path(exp["storage"]["path"]) / "nan-run"


def test_nan_stops_the_run_with_one_clear_line(nan_run):
    _, result, run_dir = nan_run
    assert result.exit_code == 1, (result.exit_code, result.stderr[-3000:], result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, "no error message"
    last = lines[-1]
    assert last.startswith(
        "error: non-finite loss at step 5; stopped at step 6 without writing a checkpoint; last good checkpoint: step 3"
    ), last
    assert f"[latest checkpoint: step 3 at {run_dir}/checkpoint_" in last and "rerun to resume" in last
    assert isinstance(result.exception, SystemExit), "the CLI let an exception (a traceback) through"


def test_no_checkpoint_after_the_nan_and_the_last_one_is_clean(nan_run):
    from pipelines.train.checkpoint import load_state

    _, _, run_dir = nan_run
    ckpts = checkpoint_steps(run_dir)
    assert sorted(ckpts) == [3], f"checkpoints written: {sorted(ckpts)} (6 would hold NaN weights)"
    state = load_state(ckpts[3])
    assert all(torch_finite(v) for v in state["model"].values())


def test_run_marked_failed_and_no_nan_metric_logged(nan_run):
    exp, _, _ = nan_run
    c = tracking.client(exp["tracking"]["uri"])
    runs = c.search_runs(
        [c.get_experiment_by_name("test").experiment_id], filter_string="attributes.run_name = 'nan-run'"
    )
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    hist = c.get_metric_history(runs[0].info.run_id, "train/loss")
    assert [(m.step, math.isfinite(m.value)) for m in hist] == [(4, True)]


def torch_finite(t) -> bool:
    import torch

    return bool(torch.isfinite(t).all()) if t.is_floating_point() else True
