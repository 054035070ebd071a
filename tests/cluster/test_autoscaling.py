"""A sweep under Ray's autoscaler (fake multi-node provider), with the node types of infra/aws/cluster.yaml.

The cluster starts with the head only (TRAIN_DRIVER, no training slot). A 4-trial sweep whose trials train on
one worker each (`rehearsal_gpu`: 1) makes the autoscaler add worker nodes; after the sweep they idle out.
Midway the sweep loses a node that runs a trial's worker, the way a spot reclaim does (SIGKILL of the node's
raylet and everything it started): that trial continues from its own checkpoint on another node. One sweep
shows both, to keep the suite short."""

from __future__ import annotations

import threading
import time

import pytest
import yaml

from infra.rehearse.autoscaling import FakeAutoscalingCluster, rehearsal_config
from infra.rehearse.procs import wait_for
from infra.rehearse.run import SLOT, aimctl, driver_env, experiment, finish, history, registered_checkpoints
from infra.rehearse.services import shared_services

pytestmark = [pytest.mark.cluster, pytest.mark.ray]

STEPS, EVERY = 20, 5


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    from mlflow import MlflowClient

    from pipelines.data.demo import write_demo

    tmp = tmp_path_factory.mktemp("autoscaling")
    demo = write_demo(str(tmp / "demo"), shards=2, per_shard=200, curated_train=32, curated_test=32, size=16)
    config = rehearsal_config(
        slot=SLOT, head_cpus=2, worker_cpus=1, max_per_type=2, max_workers=2, idle_timeout_minutes=0.3
    )
    with shared_services(tmp / "services") as services:
        # a reclaimed node's raylet stops reporting: the autoscaler reaps it after this many seconds
        extra = {"AUTOSCALER_HEARTBEAT_TIMEOUT_S": "10"}
        with FakeAutoscalingCluster(config, env=services.node_env(), extra_env=extra) as cluster:
            yield tmp, demo, services, cluster, MlflowClient(services.tracking_uri)


class NodeCounts(threading.Thread):
    """The worker-node count the cluster reports, sampled every second: [(seconds, count), ...]."""

    def __init__(self, cluster: FakeAutoscalingCluster) -> None:
        super().__init__(daemon=True)
        self.cluster, self.samples, self.stop = cluster, [], threading.Event()
        self.t0 = time.monotonic()

    def run(self) -> None:
        while not self.stop.wait(1.0):
            nodes = self.cluster.worker_nodes()
            if nodes is not None:
                self.samples.append((round(time.monotonic() - self.t0, 1), len(nodes)))


def _sweep(tmp, demo, services, name: str) -> str:
    base = experiment(
        demo,
        services,
        f"{name}-base",
        schedule={"steps": STEPS},
        storage={"checkpoint_every": EVERY},
        scaling={"num_workers": 1, "max_failures": 5},
    )
    (tmp / f"{name}-base.yaml").write_text(yaml.safe_dump(base, sort_keys=False))
    sweep = {
        "name": name,
        "base": f"{name}-base.yaml",
        "mode": "grid",
        "axes": {
            "target": {"norm_pixel": {"target.name": "norm_pixel"}, "pixel": {"target.name": "pixel"}},
            "attention": {"prefix": {"model.attention": "prefix"}, "causal": {"model.attention": "causal"}},
        },
        # on an autoscaling cluster the CPUs are not there when the sweep plans: say how many run at once
        "resources": {"cpus_per_trial": 0.25, "max_concurrent_trials": 2},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return str(path)


def _children(c, sweep: str) -> list:
    exp = c.get_experiment_by_name("rehearsal")
    if exp is None:  # the sweep has not opened its parent run yet
        return []
    runs = c.search_runs([exp.experiment_id], filter_string=f"tags.sweep = '{sweep}'")
    return [r for r in runs if r.data.tags.get("aim.kind") != "sweep"]


def _parents(c, sweep: str) -> list:
    exp = c.get_experiment_by_name("rehearsal")
    return c.search_runs([exp.experiment_id], filter_string=f"tags.sweep = '{sweep}' and tags.`aim.kind` = 'sweep'")


def _check_trials(c, sweep: str) -> dict[str, dict[int, float]]:
    """One parent, four children with distinct names, each FINISHED with every step logged exactly once;
    returns {child run name: train/resumed_from history}."""
    (parent,) = _parents(c, sweep)
    children = _children(c, sweep)
    names = [r.info.run_name for r in children]
    assert len(children) == 4 and len(set(names)) == 4, names
    resumed = {}
    for r in children:
        assert r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
        assert r.info.status == "FINISHED", (r.info.run_name, r.info.status)
        assert sorted(history(c, r.info.run_id, "train/loss")) == list(range(1, STEPS + 1)), r.info.run_name
        resumed[r.info.run_name] = history(c, r.info.run_id, "train/resumed_from")
    return resumed


def _on_head(cluster: FakeAutoscalingCluster) -> bool:
    """Every trial driver (Tune's trial actor and the trial's task) ran on the head."""
    from ray.util.state import list_actors, list_tasks

    workers = {n["node_id"] for n in cluster.worker_nodes() or []}
    actors = list_actors(address=cluster.dashboard, filters=[("class_name", "=", "ImplicitFunc")], detail=True)
    tasks = list_tasks(address=cluster.dashboard, filters=[("name", "=", "_run_trial")], detail=True)
    assert actors and tasks, "no trial drivers found"
    return not ({a.node_id for a in actors} | {t.node_id for t in tasks}) & workers


@pytest.mark.timeout(720)
def test_sweep_scales_up_from_zero_survives_a_reclaim_and_scales_back(rig):
    tmp, demo, services, cluster, c = rig
    assert cluster.worker_nodes() == [], "the cluster starts with the head only"
    counts = NodeCounts(cluster)
    counts.start()
    env = driver_env(services, cluster.address)
    proc = aimctl("sweep", _sweep(tmp, demo, services, "scale"), env=env, log=tmp / "scale.log")
    try:
        # a spot reclaim: once a trial is past its first checkpoint, SIGKILL the node running its worker
        def workers() -> set[str]:
            return {n["node_id"] for n in cluster.worker_nodes() or []}

        def a_trial_past_its_first_checkpoint():
            for r in _children(c, "scale"):
                step, node = r.data.metrics.get("train/step", 0), r.data.tags.get("ray.rank0_node")
                if r.info.status == "RUNNING" and EVERY + 2 <= step < STEPS - 3 and node in workers():
                    if registered_checkpoints(services, f"runs/{r.info.run_name}"):
                        return r.info.run_name, node

        victim_run, victim_node = wait_for(a_trial_past_its_first_checkpoint, 400, f"a trial at step {EVERY + 2}")
        pids = cluster.node_processes(victim_node)
        assert len(pids) >= 2, "a node runs at least a raylet and a training worker"
        for pid in pids:
            _sigkill(pid)
        finish(proc, tmp / "scale.log", 480)
        assert _on_head(cluster)
        wait_for(lambda: cluster.worker_nodes() == [], 90, "the idle worker nodes to be removed")
    finally:
        counts.stop.set()
        counts.join()
    counts.samples.append((round(time.monotonic() - counts.t0, 1), len(cluster.worker_nodes())))
    seen = [n for _, n in counts.samples]
    assert seen[0] == 0 and max(seen) >= 1 and seen[-1] == 0, counts.samples  # up from 0, back to 0
    resumed = _check_trials(c, "scale")  # one parent, four children, no duplicated runs, every step once
    restarted = {name: sorted(v for v in h.values() if v > 0) for name, h in resumed.items()}
    restarted = {k: v for k, v in restarted.items() if v}
    assert victim_run in restarted, f"{victim_run} did not resume after its node was killed: {resumed}"
    assert all(v[0] % EVERY == 0 for v in restarted.values()), restarted  # from its own checkpoint, not 0
    print("worker nodes over time (s, count):", _changes(counts.samples), "resumed:", restarted)


def _sigkill(pid: int) -> None:
    import contextlib
    import os
    import signal

    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _changes(samples: list[tuple[float, int]]) -> list[tuple[float, int]]:
    return [s for i, s in enumerate(samples) if i == 0 or s[1] != samples[i - 1][1]]
