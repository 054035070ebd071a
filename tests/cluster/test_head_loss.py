"""The head's loss: without GCS fault tolerance a Ray cluster ends with its head (drivers, Tune's controller,
the object store). What survives is on S3 (Tune's experiment state, every trial's checkpoints) and in MLflow.
Resubmitting `aimctl sweep ... --resume` to a fresh cluster finishes only what was unfinished."""

from __future__ import annotations

import pytest
import yaml

from infra.rehearse.cluster import LocalCluster
from infra.rehearse.procs import kill_session, wait_for
from infra.rehearse.run import aimctl, driver_env, experiment, finish, history
from infra.rehearse.services import shared_services

pytestmark = [pytest.mark.cluster, pytest.mark.ray]

STEPS, EVERY = 30, 5


def _runs(c, sweep: str) -> dict:
    exp = c.get_experiment_by_name("rehearsal")
    if exp is None:
        return {}
    runs = c.search_runs([exp.experiment_id], filter_string=f"tags.sweep = '{sweep}'")
    return {r.info.run_name: r for r in runs if r.data.tags.get("aim.kind") != "sweep"}


@pytest.mark.timeout(600)
def test_head_loss_then_resume_on_a_fresh_cluster_finishes_only_the_rest(tmp_path):
    from mlflow import MlflowClient

    from pipelines.data.demo import write_demo

    demo = write_demo(str(tmp_path / "demo"), shards=2, per_shard=200, curated_train=32, curated_test=32, size=16)
    with shared_services(tmp_path / "services") as services:
        c = MlflowClient(services.tracking_uri)
        base = experiment(
            demo,
            services,
            "head-base",
            schedule={"steps": STEPS},
            storage={"checkpoint_every": EVERY},
            scaling={"num_workers": 0, "worker_resources": {}},  # trials train inside their driver task
        )
        (tmp_path / "head-base.yaml").write_text(yaml.safe_dump(base))
        sweep = {
            "name": "head",
            "base": "head-base.yaml",
            "mode": "grid",
            "axes": {"target": {"pixel": {"target.name": "pixel"}, "norm_pixel": {"target.name": "norm_pixel"}}},
            "resources": {"cpus_per_trial": 0.25, "max_concurrent_trials": 1},  # one after the other
        }
        path = tmp_path / "head.yaml"
        path.write_text(yaml.safe_dump(sweep))

        first = LocalCluster(env=services.node_env(), head_cpus=2)
        first.start()
        try:
            env = driver_env(services, first.address)
            proc = aimctl("sweep", str(path), env=env, log=tmp_path / "first.log")

            def one_done_one_midway():
                runs = _runs(c, "head")
                done = [r for r in runs.values() if r.info.status == "FINISHED"]
                mid = [r for r in runs.values() if EVERY + 2 <= r.data.metrics.get("train/step", 0) < STEPS]
                return (done and mid) and (done[0].info.run_name, mid[0].info.run_name)

            done, mid = wait_for(one_done_one_midway, 400, "one finished trial and one past its first checkpoint")
            before = {n: history(c, r.info.run_id, "train/loss") for n, r in _runs(c, "head").items()}
            kill_session(first.nodes[0].sid)  # the head: GCS, raylet, Tune's trial actors, the trial's training
            kill_session(proc.pid)  # and the driver, which ran on it
        finally:
            first.stop()

        with LocalCluster(env=services.node_env(), head_cpus=2) as second:
            out = finish(
                aimctl(
                    "sweep", str(path), "--resume", env=driver_env(services, second.address), log=tmp_path / "2.log"
                ),
                tmp_path / "2.log",
                400,
            )
        runs = _runs(c, "head")
        assert sorted(runs) == sorted({done, mid} | set(runs)) and len(runs) == 2, sorted(runs)  # no duplicates
        for name, r in runs.items():
            assert r.info.status == "FINISHED", (name, r.info.status, out[-2000:])
            assert sorted(history(c, r.info.run_id, "train/loss")) == list(range(1, STEPS + 1)), name
        assert history(c, runs[done].info.run_id, "train/loss") == before[done], "the finished trial was not rerun"
        resumed = sorted(v for v in history(c, runs[mid].info.run_id, "train/resumed_from").values() if v > 0)
        assert resumed and resumed[0] % EVERY == 0, f"the interrupted trial should resume from a checkpoint: {resumed}"
