"""Storage faults: the training data is read from a local S3 endpoint (moto, with authentication) that is
stopped mid-run. Stopped and started again on the same port within the retry window (`data.s3.retry_seconds`):
the run waits and continues. Kept down: the run fails with one clear line naming the location and the
endpoint, and its last checkpoint (local here) is intact and loadable.

One run covers both: the endpoint goes down as the workers start (their first reads hit it) and comes back
3 s later; once the run has checkpointed step 12 it goes down for good, so the next epoch's reads fail.
Runs through the real `aimctl pretrain` code (typer's runner, in this process, on the session's local Ray)."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import pytest
import yaml
from fault_hooks import PidFileHooks
from reliability_helpers import aws_env, checkpoint_steps, cli_pretrain_hooks, moto_s3, wait_for

from pipelines import tracking
from tests.conftest import experiment

pytestmark = [pytest.mark.reliability, pytest.mark.ray]

BUCKET = "aim-rel-faults"
RETRY_S, OUTAGE_S = 8.0, 3.0


@pytest.fixture(scope="module")
def outage_run(ray_local, tmp_path_factory):
    from typer.testing import CliRunner

    from pipelines.cli import app
    from pipelines.data.config import S3Config
    from pipelines.data.demo import write_demo

    tmp = tmp_path_factory.mktemp("s3-outage")
    with moto_s3(BUCKET, "rel-faults") as s3, aws_env(s3):
        s3cfg = {"endpoint_url": s3.endpoint, "retry_seconds": RETRY_S}
        demo = write_demo(
            f"s3://{BUCKET}/demo",
            shards=2,
            per_shard=120,
            curated_train=300,
            curated_test=200,
            size=32,
            s3=S3Config(**s3cfg),
        )
        exp = experiment(
            demo,
            tmp,
            "s3-outage",
            schedule={"steps": 30},
            data={"s3": s3cfg},
            storage={"checkpoint_every": 6, "keep": 10},
            scaling={"max_failures": 0},
        )
        path = tmp / "exp.yaml"
        path.write_text(yaml.safe_dump(exp))
        run_dir, pid_file = Path(exp["storage"]["path"]) / "s3-outage", tmp / "pids.txt"
        events: dict = {}

        def chaos():
            try:
                # the trainer has started (its storage marker is written after the driver's S3 listing)
                wait_for(lambda: (run_dir / ".validate_storage_marker").exists(), 600, "the trainer", interval=0.05)
                s3.stop()
                events["down"] = time.time()
                wait_for(pid_file.exists, 600, "the worker to start", interval=0.05)  # its reads begin now
                events["worker"] = time.time()
                time.sleep(OUTAGE_S)
                s3.start()
                events["up"] = time.time()
                wait_for(lambda: max(checkpoint_steps(run_dir), default=0) >= 12, 600, "step 12", interval=0.05)
                s3.stop()
                events["down_for_good"] = time.time()
            except BaseException as e:  # noqa: BLE001 - reported by the tests
                events["error"] = e

        thread = threading.Thread(target=chaos, daemon=True)
        thread.start()
        t0 = time.time()
        with cli_pretrain_hooks(PidFileHooks(str(pid_file))):  # the file appears when the worker starts
            result = CliRunner().invoke(app, ["pretrain", str(path)])
        events["ended"] = time.time() - t0
        thread.join(timeout=30)
        yield exp, result, run_dir, events, s3


def _history(exp):
    c = tracking.client(exp["tracking"]["uri"])
    runs = c.search_runs(
        [c.get_experiment_by_name("test").experiment_id], filter_string="attributes.run_name = 's3-outage'"
    )
    assert len(runs) == 1
    return runs[0], sorted(
        (m.step, m.timestamp / 1000) for m in c.get_metric_history(runs[0].info.run_id, "train/loss")
    )


def test_restart_within_the_retry_window_the_run_continues(outage_run):
    exp, _, _, events, _ = outage_run
    assert "error" not in events, events.get("error")
    _, hist = _history(exp)
    steps = [s for s, _ in hist]
    assert steps[:12] == list(range(1, 13)), "the run did not continue through the outage"
    first_ts = hist[0][1]
    assert first_ts >= events["up"] - 0.05, "step 1 trained before the endpoint came back: no outage was hit"


def test_kept_down_the_run_fails_with_one_clear_line(outage_run):
    exp, result, run_dir, events, s3 = outage_run
    assert result.exit_code == 1, (result.exit_code, result.stderr[-3000:], result.exception)
    assert isinstance(result.exception, SystemExit), "the CLI let an exception (a traceback) through"
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error: ") and f"s3://{BUCKET}/demo/" in last, last
    assert f"storage endpoint {s3.endpoint} unreachable (retried for 13 s" in last, last
    assert "rerun to resume" in last and str(run_dir) in last, last
    assert s3.secret not in result.stderr + result.stdout and s3.key not in result.stderr + result.stdout
    run, hist = _history(exp)
    assert run.info.status == "FAILED"
    assert max(s for s, _ in hist) < 30


def test_kept_down_the_last_checkpoint_is_intact(outage_run):
    from pipelines.train.checkpoint import load_state

    exp, result, run_dir, _, _ = outage_run
    ckpts = checkpoint_steps(run_dir)
    last = max(ckpts)
    assert last >= 12 and f"latest checkpoint: step {last} at {ckpts[last]}" in result.stderr
    state = load_state(ckpts[last])
    assert state["step"] == last
    assert all(math.isfinite(float(v.float().abs().sum())) for v in state["model"].values())
    _, hist = _history(exp)
    assert [s for s, _ in hist][:last] == list(range(1, last + 1))
