"""infra/aws/cluster.yaml through Ray's own config preparation + validation (offline: no AWS call), and
the KubeRay manifests through Ray's own RayCluster -> autoscaler config translation, plus the structure
the code relies on (driver resource name, GPU node shapes, RayJob commands and overrides)."""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from pipelines.submit import DRIVER_RESOURCE

ROOT = Path(__file__).resolve().parents[2]
AWS = ROOT / "infra/aws/cluster.yaml"
KUBERAY = ROOT / "infra/kuberay"


def _load(path: Path):
    return yaml.safe_load(path.read_text())


def _no_credentials(text: str) -> None:
    assert not re.search(r"AKIA[0-9A-Z]{12,}", text), "an AWS access key id is in the file"
    for m in re.finditer(r"(?im)^\s*-?\s*\{?\s*(aws_secret_access_key|aws_session_token|password)\s*:\s*(\S+)", text):
        pytest.fail(f"a credential value is in the file: {m.group(0)!r}")


# ---------------------------------------------------------------- AWS cluster launcher


def test_aws_config_prepares_and_validates_offline():
    from ray.autoscaler._private.util import prepare_config, validate_config
    from ray.autoscaler.v2.instance_manager.config import AutoscalingConfig

    raw = _load(AWS)
    cfg = prepare_config(copy.deepcopy(raw))  # merges ray/autoscaler/aws/defaults.yaml; no boto3 call
    validate_config(cfg)  # ray-schema.json + required fields
    # The v2 autoscaler's own reader accepts it too (same prepare + validate, plus node-type parsing).
    v2 = AutoscalingConfig(copy.deepcopy(raw), skip_content_hash=True)
    assert v2.get_head_node_type() == raw["head_node_type"]
    assert set(v2.get_node_type_configs()) == set(raw["available_node_types"])
    # Our empty setup lists must replace the defaults' wheel install, not be merged with it.
    assert cfg["setup_commands"] == [] and cfg["head_setup_commands"] == [] and cfg["worker_setup_commands"] == []


def test_aws_node_types_shape():
    cfg = _load(AWS)
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get(DRIVER_RESOURCE, 0) >= 1, "the head must advertise the driver resource"
    assert "GPU" not in head["resources"]
    assert "InstanceMarketOptions" not in head["node_config"], "the head (drivers) must be on-demand"
    workers = {k: v for k, v in types.items() if k != cfg["head_node_type"]}
    for name, t in workers.items():
        assert DRIVER_RESOURCE not in t["resources"], f"{name}: drivers belong on the head only"
        assert t.get("min_workers", 0) == 0, f"{name}: worker types must scale to zero"
        assert t["max_workers"] >= 1
    gpu = {k: v for k, v in workers.items() if v["resources"].get("GPU")}
    assert {v["resources"]["GPU"] for v in gpu.values()} == {8}
    markets = {
        ("spot" if v["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot" else "on-demand")
        for v in gpu.values()
    }
    assert markets == {"spot", "on-demand"}
    assert any(not v["resources"].get("GPU") for v in workers.values()), "CPU decode nodes missing"
    assert sum(v["max_workers"] for v in workers.values()) >= cfg["max_workers"] > 0


def test_aws_image_shm_and_dashboard():
    cfg = _load(AWS)
    docker = cfg["docker"]
    assert docker["image"] and docker["container_name"]
    assert any("--shm-size" in o for o in docker.get("head_run_options", []))
    for name, t in cfg["available_node_types"].items():
        if name != cfg["head_node_type"]:
            assert any("--shm-size" in o for o in t["docker"]["worker_run_options"]), name
    head_cmd = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_cmd and "--autoscaling-config" in head_cmd
    _no_credentials(AWS.read_text())


# ---------------------------------------------------------------- KubeRay


def _raycluster():
    cr = _load(KUBERAY / "raycluster.yaml")
    cr["metadata"].setdefault("namespace", "aim")
    return cr


def _groups(spec: dict) -> dict[str, dict]:
    return {g["groupName"]: g for g in spec["workerGroupSpecs"]}


def test_raycluster_translates_to_a_valid_autoscaler_config():
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr
    from ray.autoscaler._private.util import prepare_config, validate_config

    cr = _raycluster()
    cfg = _derive_autoscaling_config_from_ray_cr(cr)  # what the in-tree autoscaler computes from the CR
    validate_config(prepare_config(cfg))
    types = cfg["available_node_types"]
    assert types["headgroup"]["resources"].get(DRIVER_RESOURCE, 0) >= 1
    for name, g in _groups(cr["spec"]).items():
        assert types[name]["min_workers"] == g["minReplicas"] == 0
        assert types[name]["max_workers"] == g["maxReplicas"] >= 1
        assert DRIVER_RESOURCE not in types[name]["resources"]
    gpu = [n for n, t in types.items() if t["resources"].get("GPU")]
    assert gpu and all(types[n]["resources"]["GPU"] == 8 for n in gpu)
    assert any(n != "headgroup" and not types[n]["resources"].get("GPU") for n in types), "no CPU decode group"


def test_raycluster_structure():
    cr = _raycluster()
    assert cr["apiVersion"] == "ray.io/v1" and cr["kind"] == "RayCluster"
    spec = cr["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["autoscalerOptions"]["version"] == "v2"
    pyproject = (ROOT / "pyproject.toml").read_text()
    ray_pin = re.search(r'"ray\[[^\]]*\]==([0-9.]+)"', pyproject).group(1)
    assert spec["rayVersion"] == ray_pin
    head = spec["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP"
    assert all(isinstance(v, str) for v in head["rayStartParams"].values()), "rayStartParams values are strings"
    pods = [head["template"]["spec"]] + [g["template"]["spec"] for g in spec["workerGroupSpecs"]]
    for pod in pods:
        c = pod["containers"][0]
        assert any(m["mountPath"] == "/dev/shm" for m in c["volumeMounts"]), "shm not sized"
        assert any(v.get("emptyDir", {}).get("medium") == "Memory" for v in pod["volumes"])
        assert not any(e.get("name", "").startswith("AWS_SECRET") for e in c.get("env", []))
    groups = _groups(spec)
    gpu = [
        g
        for g in groups.values()
        if g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")
    ]
    assert {g["template"]["spec"]["nodeSelector"]["eks.amazonaws.com/capacityType"] for g in gpu} == {
        "SPOT",
        "ON_DEMAND",
    }
    assert head["template"]["spec"]["nodeSelector"]["eks.amazonaws.com/capacityType"] == "ON_DEMAND"
    for f in KUBERAY.glob("*.yaml"):
        _no_credentials(f.read_text())


def _set_keys_exist(entrypoint: list[str]) -> None:
    """Every `--set a.b=v` names a field of ExperimentConfig (the model uses extra=forbid)."""
    from pipelines.config import ExperimentConfig

    sets = [entrypoint[i + 1] for i, t in enumerate(entrypoint) if t == "--set"]
    assert sets
    for item in sets:
        path, _, _ = item.partition("=")
        model = ExperimentConfig
        for part in path.split("."):
            assert part in model.model_fields, f"--set {path}: no field {part!r}"
            ann = model.model_fields[part].annotation
            model = ann if isinstance(ann, type) else None
            if model is None:
                break


@pytest.mark.parametrize("name,command", [("rayjob-pretrain.yaml", "pretrain"), ("rayjob-sweep.yaml", "sweep")])
def test_rayjob_templates(name, command):
    job = _load(KUBERAY / name)
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["aimctl", command]
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] >= 0
    assert 1 <= spec["backoffLimit"] <= 5 and spec["submitterConfig"]["backoffLimit"] >= 1
    assert json.loads(spec["entrypointResources"]) == {DRIVER_RESOURCE: 1}
    assert yaml.safe_load(spec["runtimeEnvYAML"])["working_dir"] == "/home/ray/aim"  # the Dockerfile's WORKDIR
    # The embedded cluster is exactly infra/kuberay/raycluster.yaml's spec (no drift).
    assert spec["rayClusterSpec"] == _load(KUBERAY / "raycluster.yaml")["spec"]
    target = next(a for a in argv[2:] if a.endswith(".yaml"))
    if command == "pretrain":
        _set_keys_exist(argv)
        assert "--stop-after" not in argv
    else:
        assert "--resume" in argv, "retries must resume the sweep, not restart it"
    _check_cli_accepts(command, argv[2:])
    assert (ROOT / target).is_file(), f"{target} (named by the job) is not in the repository"
    # The file plus the overrides is a valid experiment / sweep, as the job will load it.
    if command == "pretrain":
        from pipelines.config import load_experiment

        sets = [argv[i + 1] for i, t in enumerate(argv) if t == "--set"]
        cfg = load_experiment(ROOT / target, sets)
        assert cfg.scaling.use_gpu and cfg.storage.path.startswith("s3://"), "a cluster run needs GPUs and S3"
    else:
        from pipelines.sweep.spec import load_sweep

        _, trials = load_sweep(ROOT / target)
        assert all(t.config.scaling.use_gpu and t.config.storage.path.startswith("s3://") for t in trials)


def _check_cli_accepts(command: str, args: list[str]) -> None:
    """The arguments parse against the real command's options (nothing runs)."""
    import typer
    from typer.main import get_command

    if command == "pretrain":
        from pipelines.cli_train import pretrain as fn
    else:
        from pipelines.cli_sweep import sweep as fn
    app = typer.Typer()
    app.command(command)(fn)
    app.command("_other")(lambda: None)  # a group, so the sub-command name is parsed as in aimctl
    cli = get_command(app)
    ctx = cli.make_context("aimctl", [command, *args], resilient_parsing=False)
    sub = cli.get_command(ctx, command)
    sub.make_context(command, list(args), parent=ctx)
