"""A multi-node Ray cluster on one machine: a head and worker nodes, each a real `ray start` in its own
process session on 127.0.0.1, so one node can be killed the way a spot reclaim kills a machine (SIGKILL of
its raylet, object store, agents and every worker it runs) while the rest of the cluster lives on.

`ray stop` would stop every Ray on the machine (other tests', other users'); nodes are stopped by session."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from infra.rehearse.procs import free_port, kill_session, stop_session, wait_for

RAY = str(Path(sys.executable).parent / "ray")
# Node death is noticed by the GCS's health checks (default 3 s x 5 misses); a little quicker here
# Every process of the rehearsal: no token auth on a loopback-only cluster (the driver gets the same), no usage stats
REHEARSAL_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
FAST_HEALTH_CHECKS = {"health_check_period_ms": 1000, "health_check_failure_threshold": 5}


@dataclass
class Node:
    name: str
    sid: int  # its process session: `ray start` and everything it spawned
    resources: dict[str, float]


@dataclass
class LocalCluster:
    """Start with `start()`, add nodes with `add_node()`, `kill_node()` one, `stop()` all (or use `with`)."""

    env: dict[str, str]  # every node's environment (the cloud's instance environment: endpoints, keys)
    head_cpus: float = 2
    head_resources: dict[str, float] = field(default_factory=lambda: {"TRAIN_DRIVER": 4})
    system_config: dict = field(default_factory=lambda: dict(FAST_HEALTH_CHECKS))
    object_store_mb: int = 100
    nodes: list[Node] = field(default_factory=list)
    tmp: str = ""
    port: int = 0
    dashboard_port: int = 0

    @property
    def address(self) -> str:
        """The GCS address, as RAY_ADDRESS takes it."""
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="rayc", dir="/tmp")  # short: socket paths must fit in 107 chars
        self.port, self.dashboard_port = free_port(), free_port()
        head = [
            "--head",
            f"--port={self.port}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
            f"--ray-client-server-port={free_port()}",
            f"--system-config={json.dumps(self.system_config, separators=(',', ':'))}",
        ]
        self._start("head", self.head_cpus, self.head_resources, head)
        wait_for(self._jobs_api_up, 60, "the head's dashboard")

    def add_node(self, name: str, cpus: float, resources: dict[str, float]) -> Node:
        """Start a worker node and wait until the cluster sees it."""
        before = {n["node_id"] for n in self.alive_nodes()}
        node = self._start(name, cpus, resources, [f"--address={self.address}"])
        wait_for(lambda: {n["node_id"] for n in self.alive_nodes()} - before, 60, f"node {name} to join")
        return node

    def kill_node(self, node: Node) -> int:
        """SIGKILL every process of the node at once; returns how many there were."""
        self.nodes.remove(node)
        return kill_session(node.sid)

    def alive_nodes(self) -> list[dict]:
        """The cluster's live nodes as the GCS reports them: {node_id, resources}."""
        from ray._raylet import GcsClient  # no driver connection needed (and none to disturb)

        try:
            infos = GcsClient(address=self.address).get_all_node_info(timeout=5)
        except Exception:  # noqa: BLE001 - GCS not up (yet)
            return []
        return [
            {"node_id": i.node_id.hex(), "resources": dict(i.resources_total)}
            for i in infos.values()
            if i.state == 0  # ALIVE
        ]

    def stop(self) -> None:
        for node in reversed(self.nodes):  # workers first, the head last
            stop_session(node.sid)
        self.nodes.clear()
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _start(self, name: str, cpus: float, resources: dict, extra: list[str]) -> Node:
        cmd = [
            RAY,
            "start",
            *extra,
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={cpus}",
            f"--resources={json.dumps(resources)}",
            f"--object-store-memory={self.object_store_mb * 1024 * 1024}",
            f"--temp-dir={self.tmp}/{len(self.nodes)}",  # per node: else every node's log monitor sends each log
            # fixed default ports (agent 52365, metrics) would collide between nodes on one machine
            f"--dashboard-agent-listen-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            "--disable-usage-stats",
        ]
        env = {**os.environ, **REHEARSAL_ENV, **self.env, "RAY_TMPDIR": f"{self.tmp}/{len(self.nodes)}"}
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        out, _ = proc.communicate(timeout=120)
        if proc.returncode != 0:
            stop_session(proc.pid)
            raise RuntimeError(f"ray start ({name}) failed:\n{out[-3000:]}")
        node = Node(name, proc.pid, {"CPU": cpus, **resources})
        self.nodes.append(node)
        return node

    def _jobs_api_up(self) -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(f"{self.dashboard}/api/version", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False
