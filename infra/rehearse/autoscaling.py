"""The cluster of infra/aws/cluster.yaml under Ray's own autoscaler, on one machine.

Ray's fake multi-node provider (`fake_multinode`, what `ray.cluster_utils.AutoscalingCluster` drives) stands
in for EC2: the autoscaler launches and terminates real raylets on this machine. The node types are read
from infra/aws/cluster.yaml, so the rehearsal runs the layout users deploy: the head advertises
TRAIN_DRIVER (drivers stay on it), worker types start from `min_workers` (0) and end after the idle timeout.
Scaled down to fit one machine: each worker node gets `worker_cpus` CPUs, a GPU node's GPUs become one
logical `slot` resource (torch here is CPU-only), and `max_workers` is capped.

Unlike AutoscalingCluster.start, nothing here runs `ray stop --force` (it would stop every Ray on the
machine): the head and the nodes the autoscaler starts live in one process session, stopped as a unit."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from infra.rehearse.cluster import FAST_HEALTH_CHECKS, RAY, REHEARSAL_ENV
from infra.rehearse.procs import free_port, session_pids, stop_session, wait_for

AWS_CLUSTER = Path(__file__).resolve().parents[1] / "aws" / "cluster.yaml"
HEAD_TYPE = "ray.head.default"  # the fake provider's name for the head's type


def rehearsal_config(
    source: Path = AWS_CLUSTER,
    *,
    slot: str,
    head_cpus: float = 2,
    worker_cpus: float = 1,
    max_per_type: int = 2,
    max_workers: int = 3,
    idle_timeout_minutes: float = 0.1,
) -> dict:
    """The fake-multinode autoscaler config of `source`'s node types, scaled down (see module doc)."""
    real = yaml.safe_load(source.read_text())
    head_type = real["head_node_type"]
    types = {}
    for name, spec in real["available_node_types"].items():
        if name == head_type:
            continue
        res = spec.get("resources", {})
        resources = {"CPU": worker_cpus, **({slot: 1} if res.get("GPU") else {})}
        types[name] = {
            "resources": resources,
            "node_config": {},
            "min_workers": spec.get("min_workers", 0),
            "max_workers": min(spec.get("max_workers", max_per_type), max_per_type),
        }
    head = {k: v for k, v in real["available_node_types"][head_type]["resources"].items() if k != "CPU"}
    types[HEAD_TYPE] = {"resources": {"CPU": head_cpus, **head}, "node_config": {}, "max_workers": 0}
    return {
        "cluster_name": "aim-rehearsal",
        "max_workers": min(real.get("max_workers", max_workers), max_workers),
        "upscaling_speed": real.get("upscaling_speed", 1.0),
        "idle_timeout_minutes": idle_timeout_minutes,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
        },
        "available_node_types": types,
        "head_node_type": HEAD_TYPE,
        "auth": {},
        "docker": {},
        **{k: [] for k in ("initialization_commands", "setup_commands", "head_setup_commands")},
        **{k: [] for k in ("worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
    }


@dataclass
class FakeAutoscalingCluster:
    """`start()` the head (autoscaler included); worker nodes come and go on demand; `stop()` ends all."""

    config: dict
    env: dict[str, str]  # every node's environment (the cloud's instance environment: endpoints, keys)
    tmp: str = ""
    port: int = 0
    dashboard_port: int = 0
    sid: int = 0
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def __enter__(self) -> FakeAutoscalingCluster:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="raya", dir="/tmp")
        self.port, self.dashboard_port = free_port(), free_port()
        config = json.loads(json.dumps(self.config))
        config["provider"]["gcs_address"] = self.address  # else the provider assumes <node ip>:6379
        Path(self.tmp, "autoscaling.json").write_text(json.dumps(config))
        head = config["available_node_types"][HEAD_TYPE]["resources"]
        cmd = [
            RAY,
            "start",
            "--head",
            f"--autoscaling-config={self.tmp}/autoscaling.json",
            f"--port={self.port}",
            "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
            f"--ray-client-server-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--num-cpus={head['CPU']}",
            f"--resources={json.dumps({k: v for k, v in head.items() if k != 'CPU'})}",
            f"--object-store-memory={100 * 1024 * 1024}",
            f"--temp-dir={self.tmp}",
            f"--system-config={json.dumps(FAST_HEALTH_CHECKS, separators=(',', ':'))}",
            "--disable-usage-stats",
        ]
        env = {
            **os.environ,
            **REHEARSAL_ENV,
            **self.env,
            "RAY_TMPDIR": self.tmp,
            "RAY_FAKE_CLUSTER": "1",
            "AUTOSCALER_UPDATE_INTERVAL_S": "1",
            **self.extra_env,
        }
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        out, _ = proc.communicate(timeout=120)
        self.sid = proc.pid
        if proc.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start (autoscaling head) failed:\n{out[-3000:]}")
        wait_for(lambda: self.worker_nodes() is not None, 60, "the head's GCS")

    def worker_nodes(self) -> list[dict] | None:
        """Live worker nodes as the GCS reports them: {node_id, type, resources}; None if the GCS is not up."""
        from ray._raylet import GcsClient

        try:
            infos = GcsClient(address=self.address).get_all_node_info(timeout=5)
        except Exception:  # noqa: BLE001 - GCS not up (yet)
            return None
        out = []
        for i in infos.values():
            resources = dict(i.resources_total)
            if i.state == 0 and "TRAIN_DRIVER" not in resources:
                out.append({"node_id": i.node_id.hex(), "type": _node_type(i), "resources": resources})
        return out

    def node_processes(self, node_id: str) -> list[int]:
        """The PIDs of a worker node: its raylet (found by the node id the fake provider gave it) and every
        process the raylet started (workers, agents)."""
        raylets = [p for p in session_pids(self.sid) if _is_raylet_of(p, node_id)]
        return [pid for r in raylets for pid in [r, *_descendants(r)]]

    def stop(self) -> None:
        if self.sid:
            stop_session(self.sid)
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)


def _node_type(info) -> str:
    labels = dict(getattr(info, "labels", {}) or {})
    return labels.get("ray.io/node-group", "") or labels.get("ray.io/node-type-name", "")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _is_raylet_of(pid: int, node_id: str) -> bool:
    if "/raylet" not in _cmdline(pid).split(" ", 1)[0]:
        return False
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"RAY_OVERRIDE_NODE_ID_FOR_TESTING={node_id}".encode() in environ


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int(Path(d, "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out
