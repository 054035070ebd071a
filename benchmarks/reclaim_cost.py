"""What losing a node costs a run: a spot reclaim rehearsed on one machine (infra/rehearse).

    python -m benchmarks.reclaim_cost [--steps 60] [--every 10] [--kill-at 25] [--out DIR]

A head (drivers only) and two worker nodes (one training slot each) on 127.0.0.1, checkpoints on moto's S3
server, metrics on an `mlflow server`. The same 2-worker DDP run (aim-test, 16 px) runs twice: uninterrupted
(the baseline), then with every process of one worker node SIGKILLed once the run has logged `--kill-at`
steps, and a fresh node added at once. Reported: steps redone (last logged step before the kill - the
checkpoint the run resumed from), seconds from the kill to the first step the history did not hold, the
two wall times and their ratio, and the largest loss difference between the two runs at equal steps.
Prints one JSON object (and writes it to --out).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from infra.rehearse.cluster import LocalCluster
from infra.rehearse.procs import wait_for
from infra.rehearse.run import SLOT, aimctl, driver_env, experiment, finish, history, last_step, run_by_name, write
from infra.rehearse.services import shared_services


def _run(tmp: Path, demo, services, cluster, name: str, args, kill: bool) -> dict:
    cfg = experiment(demo, services, name, schedule={"steps": args.steps}, storage={"checkpoint_every": args.every})
    t0 = time.time()
    proc = aimctl("pretrain", write(tmp, cfg), env=driver_env(services, cluster.address), log=tmp / f"{name}.log")
    out = {}
    if kill:
        at = wait_for(lambda: (s := last_step(_client(services), "rehearsal", name)) >= args.kill_at and s, 600, "kill")
        victim = next(n for n in cluster.nodes if n.name == "worker-b")
        out["killed_at_step"], out["t_kill"] = at, time.time()
        out["processes_killed"] = cluster.kill_node(victim)
        cluster.add_node("worker-c", 1, {SLOT: 1})
    finish(proc, tmp / f"{name}.log", 900)
    out["wall_s"] = round(time.time() - t0, 1)
    return out


def _client(services):
    from mlflow import MlflowClient

    return MlflowClient(services.tracking_uri)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--every", type=int, default=10, help="checkpoint every N steps")
    ap.add_argument("--kill-at", type=int, default=25, help="kill a node once this many steps are logged")
    ap.add_argument("--out", default=None, help="directory for the JSON result")
    args = ap.parse_args()
    from pipelines.data.demo import write_demo

    with tempfile.TemporaryDirectory(prefix="reclaim-") as d:
        tmp = Path(d)
        demo = write_demo(str(tmp / "demo"), shards=2, per_shard=400, curated_train=32, curated_test=32, size=16)
        with shared_services(tmp / "services") as services, LocalCluster(env=services.node_env()) as cluster:
            cluster.add_node("worker-a", 1, {SLOT: 1})
            cluster.add_node("worker-b", 1, {SLOT: 1})
            base = _run(tmp, demo, services, cluster, "baseline", args, kill=False)
            lost = _run(tmp, demo, services, cluster, "reclaimed", args, kill=True)
            c = _client(services)
            ids = {n: run_by_name(c, "rehearsal", n)[0].info.run_id for n in ("baseline", "reclaimed")}
            loss = {n: history(c, i, "train/loss") for n, i in ids.items()}
            resumed = [v for v in history(c, ids["reclaimed"], "train/resumed_from").values() if v > 0]
            first_new = min(
                m.timestamp / 1000
                for m in c.get_metric_history(ids["reclaimed"], "train/loss")
                if m.step > lost["killed_at_step"]
            )
    result = {
        "benchmark": "reclaim_cost",
        "machine": f"{platform.node()} ({platform.machine()}, {__import__('os').cpu_count()} CPUs)",
        "steps": args.steps,
        "checkpoint_every": args.every,
        "killed_at_step": lost["killed_at_step"],
        "resumed_from_step": int(min(resumed)) if resumed else None,
        "steps_redone": lost["killed_at_step"] - int(min(resumed)) if resumed else None,
        "seconds_kill_to_next_new_step": round(first_new - lost["t_kill"], 1),
        "processes_killed": lost["processes_killed"],
        "wall_s": {"uninterrupted": base["wall_s"], "reclaimed": lost["wall_s"]},
        "wall_ratio": round(lost["wall_s"] / base["wall_s"], 2),
        "max_loss_diff": max(abs(loss["reclaimed"][s] - loss["baseline"][s]) for s in loss["baseline"]),
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        Path(args.out, f"reclaim_cost_{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
