"""Two nodes, one run; then the loss of one node mid-run, the way a spot reclaim looks.

A head (drivers only: TRAIN_DRIVER, no training slot) and two worker nodes with one `rehearsal_gpu` each, so
the two DDP workers of one `aimctl pretrain` (gloo) land on different raylets. Checkpoints go to moto's S3
server and metrics to a real `mlflow server`, both on 127.0.0.1: what the nodes of a real cluster share."""

from __future__ import annotations

import time

import pytest

from infra.rehearse.cluster import LocalCluster
from infra.rehearse.procs import wait_for
from infra.rehearse.run import (
    SLOT,
    aimctl,
    checkpoint_steps,
    driver_env,
    experiment,
    finish,
    history,
    last_step,
    run_by_name,
    write,
)
from infra.rehearse.services import shared_services

pytestmark = [pytest.mark.cluster, pytest.mark.ray]

STEPS, EVERY = 40, 5


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    from mlflow import MlflowClient

    from pipelines.data.demo import write_demo

    tmp = tmp_path_factory.mktemp("multinode")
    demo = write_demo(str(tmp / "demo"), shards=2, per_shard=200, curated_train=32, curated_test=32, size=16)
    with shared_services(tmp / "services") as services:
        with LocalCluster(env=services.node_env(), head_cpus=2) as cluster:
            cluster.add_node("worker-a", 1, {SLOT: 1})
            cluster.add_node("worker-b", 1, {SLOT: 1})
            yield tmp, demo, services, cluster, MlflowClient(services.tracking_uri)


def _train_worker_nodes(cluster: LocalCluster) -> set[str]:
    from ray.util.state import list_actors

    actors = list_actors(address=cluster.dashboard, filters=[("class_name", "=", "RayTrainWorker")], detail=True)
    return {a.node_id for a in actors}


@pytest.mark.timeout(420)
def test_two_nodes_one_run_then_node_loss_resumes_exactly(rig):
    tmp, demo, services, cluster, c = rig
    env = driver_env(services, cluster.address)

    # 1. Two nodes, one run: an uninterrupted reference.
    ref = write(tmp, experiment(demo, services, "ref", schedule={"steps": STEPS}, storage={"checkpoint_every": EVERY}))
    out = finish(aimctl("pretrain", ref, env=env, log=tmp / "ref.log"), tmp / "ref.log", 240)
    assert f"step {STEPS}" in out, out[-2000:]
    nodes = _train_worker_nodes(cluster)
    head_id = next(n["node_id"] for n in cluster.alive_nodes() if "TRAIN_DRIVER" in n["resources"])
    assert len(nodes) == 2 and head_id not in nodes, f"the two workers should run on the two worker nodes: {nodes}"
    (ref_run,) = run_by_name(c, "rehearsal", "ref")
    ref_loss = history(c, ref_run.info.run_id, "train/loss")
    assert sorted(ref_loss) == list(range(1, STEPS + 1))

    # 2. Node loss: SIGKILL every process of worker-b after the second checkpoint, then add a fresh node.
    cfg = experiment(demo, services, "reclaim", schedule={"steps": STEPS}, storage={"checkpoint_every": EVERY})
    path = write(tmp, cfg)
    proc = aimctl("pretrain", path, env=env, log=tmp / "reclaim.log")
    at_kill = wait_for(lambda: (s := last_step(c, "rehearsal", "reclaim")) >= 2 * EVERY + 2 and s, 180, "step 12")
    victim = next(n for n in cluster.nodes if n.name == "worker-b")
    t_kill = time.time()
    killed = cluster.kill_node(victim)
    assert killed >= 2, "a node runs at least a raylet and a training worker"
    cluster.add_node("worker-c", 1, {SLOT: 1})
    finish(proc, tmp / "reclaim.log", 300)

    (run,) = run_by_name(c, "rehearsal", "reclaim")  # one run, continued
    loss = history(c, run.info.run_id, "train/loss")  # no step twice
    assert sorted(loss) == list(range(1, STEPS + 1))
    diffs = {s: abs(loss[s] - ref_loss[s]) for s in loss}
    assert max(diffs.values()) < 1e-4, {s: d for s, d in diffs.items() if d >= 1e-4}
    resumed = history(c, run.info.run_id, "train/resumed_from")
    restarts = sorted(v for v in resumed.values() if v > 0)
    assert restarts and restarts[0] >= EVERY and restarts[0] % EVERY == 0, resumed  # from a checkpoint, not 0
    assert run.info.status == "FINISHED"
    ckpts = checkpoint_steps(services, f"runs/{cfg['name']}")
    assert max(ckpts.values()) == STEPS, ckpts

    # what the reclaim cost: steps redone, seconds from the kill to the first step the history did not have
    first_new = min(m.timestamp for m in c.get_metric_history(run.info.run_id, "train/loss") if m.step > at_kill)
    print(
        f"reclaim: killed at step {at_kill}, resumed from {restarts[0]}, redone {at_kill - restarts[0]} steps, "
        f"{first_new / 1000 - t_kill:.1f}s to the next new step"
    )
