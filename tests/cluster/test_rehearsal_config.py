"""The rehearsal's autoscaler config is infra/aws/cluster.yaml's layout, scaled down (no Ray started)."""

from __future__ import annotations

import yaml

from infra.rehearse.autoscaling import AWS_CLUSTER, HEAD_TYPE, rehearsal_config

KUBERAY = AWS_CLUSTER.parents[1] / "kuberay" / "raycluster.yaml"


def test_node_types_mirror_the_aws_cluster():
    real = yaml.safe_load(AWS_CLUSTER.read_text())
    cfg = rehearsal_config(slot="slot", head_cpus=2, worker_cpus=1, max_per_type=2, max_workers=3)
    types = cfg["available_node_types"]
    workers = {n for n in real["available_node_types"] if n != real["head_node_type"]}
    assert set(types) == workers | {HEAD_TYPE}
    assert types[HEAD_TYPE]["resources"] == {"CPU": 2, "TRAIN_DRIVER": 16}  # drivers only on the head
    for name in workers:
        spec, fake = real["available_node_types"][name], types[name]
        assert fake["min_workers"] == spec["min_workers"] == 0
        assert fake["max_workers"] == min(spec["max_workers"], 2)
        assert ("slot" in fake["resources"]) == ("GPU" in spec["resources"]), name  # GPU nodes train
        assert "TRAIN_DRIVER" not in fake["resources"]
    assert cfg["max_workers"] == 3 and cfg["provider"]["type"] == "fake_multinode"


def test_kuberay_describes_the_same_node_groups():
    docs = list(yaml.safe_load_all(KUBERAY.read_text()))
    spec = next(d for d in docs if d and d.get("kind") == "RayCluster")["spec"]
    groups = {g["groupName"].replace("-", "_"): g for g in spec["workerGroupSpecs"]}
    real = yaml.safe_load(AWS_CLUSTER.read_text())["available_node_types"]
    assert set(groups) == set(real) - {"head"}
    for name, g in groups.items():
        assert (g["minReplicas"], g["maxReplicas"]) == (real[name]["min_workers"], real[name]["max_workers"]), name
    assert "TRAIN_DRIVER" in spec["headGroupSpec"]["rayStartParams"]["resources"]
