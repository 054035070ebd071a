"""What a resume costs, early and late in a run: launch -> first trained step, and images decoded for nothing.

    python -m benchmarks.resume_cost [--early 20] [--late 2000] [--batch 16] [--repeats 2] [--workers 0]

One run of aim-test (16 px crops of 32 px demo JPEGs) trains to `--late` steps with checkpoints at `--early`
and `--late`; each checkpoint is then copied alone into a storage directory of its own. Each resume is a
fresh `aimctl pretrain` process (imports, Ray start, selection, then the worker's read from its position),
timed from launch to the MLflow timestamp of its first trained step, `--repeats` times in alternation.
`decoded_and_dropped` is the run's `data/resume_discarded_rows` (rows of the current shuffle window read
again and thrown away, per worker); `skipped_without_decoding` the rows before the position that a replay
would have decoded (`step x batch - dropped`). Target: late / early <= 1.2 and at most one block
(`data.decode.block_rows`) per worker decoded and dropped. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def _experiment(tmp: Path, demo, late: int, batch: int, workers: int, storage: Path, name: str) -> dict:
    return {
        "name": name,
        "seed": 0,
        "model": {"preset": "aim-test", "img_size": 16},
        "data": {
            "pool": {"uri": demo.pool_uri, "top_fraction": 1.0},
            "curated": {"uri": demo.curated_uri},
            "max_bad_fraction": 0.2,
            "decode": {"num_cpus": 0.5, "concurrency": 1},
        },
        "optim": {"batch_size": batch, "lr": 2e-3},
        "schedule": {"steps": late + 5, "warmup_fraction": 0.01},
        "scaling": {"num_workers": workers, "cpus_per_worker": 0.5, "threads_per_worker": 1},
        "storage": {"path": str(storage), "checkpoint_every": 1_000_000, "keep": 10},
        "tracking": {"uri": f"sqlite:///{storage / 'mlflow.db'}", "experiment": "resume-cost", "log_every": 1},
        "probe": {"enabled": False},
    }


def _aimctl(path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"),
    }
    cmd = [sys.executable, "-m", "pipelines.cli", "pretrain", str(path), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)


def _train_base(tmp: Path, demo, a) -> Path:
    """The run to resume from: checkpoints at `early` and `late` (stop_after each)."""
    storage = tmp / "base"
    path = tmp / "base.yaml"
    path.write_text(yaml.safe_dump(_experiment(tmp, demo, a.late, a.batch, a.workers, storage, "run")))
    for stop in (a.early, a.late):
        out = _aimctl(path, "--stop-after", str(stop))
        if out.returncode:
            raise SystemExit(f"training to step {stop} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    return storage


def _checkpoint_alone(base: Path, step: int, dest: Path) -> None:
    """`dest/run/` holding only the checkpoint of `step` (the driver resumes from the newest it finds)."""
    src = next(
        p
        for p in (base / "run").iterdir()
        if p.name.startswith("checkpoint_")
        and (p / "meta.json").is_file()
        and json.loads((p / "meta.json").read_text())["step"] == step
    )
    (dest / "run").mkdir(parents=True)
    shutil.copytree(src, dest / "run" / src.name)


def _resume_once(tmp: Path, demo, a, base: Path, step: int, tag: str) -> dict:
    storage = tmp / tag
    _checkpoint_alone(base, step, storage)
    path = tmp / f"{tag}.yaml"
    path.write_text(yaml.safe_dump(_experiment(tmp, demo, a.late, a.batch, a.workers, storage, "run")))
    t0 = time.time()
    out = _aimctl(path, "--stop-after", str(step + 1))
    wall = time.time() - t0
    if out.returncode:
        raise SystemExit(f"resume at {step} failed:\n{out.stderr[-4000:]}")
    from pipelines import tracking

    c = tracking.client(f"sqlite:///{storage / 'mlflow.db'}")
    run = c.search_runs([c.get_experiment_by_name("resume-cost").experiment_id])[0]
    first = next(m for m in c.get_metric_history(run.info.run_id, "train/loss") if m.step == step + 1)
    dropped = {m.step: m.value for m in c.get_metric_history(run.info.run_id, "data/resume_discarded_rows")}
    shutil.rmtree(storage)
    n_dropped = int(dropped.get(step + 1, -1))
    return {
        "to_first_step_s": round(first.timestamp / 1000 - t0, 2),
        "process_s": round(wall, 2),
        "decoded_and_dropped": n_dropped,
        "skipped_without_decoding": step * a.batch - n_dropped,
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--early", type=int, default=20)
    p.add_argument("--late", type=int, default=2000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--workers", type=int, default=0, help="scaling.num_workers (0: in-process)")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    a = p.parse_args(argv)
    from pipelines.data.demo import write_demo

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        demo = write_demo(str(tmp / "data"), shards=4, per_shard=400, curated_train=400, curated_test=50, size=32)
        t0 = time.time()
        base = _train_base(tmp, demo, a)
        train_s = time.time() - t0
        runs: dict[str, list[dict]] = {"early": [], "late": []}
        for i in range(a.repeats):
            for tag, step in (("early", a.early), ("late", a.late)):
                runs[tag].append(_resume_once(tmp, demo, a, base, step, f"{tag}{i}"))
    med = {k: round(statistics.median(r["to_first_step_s"] for r in v), 2) for k, v in runs.items()}
    report = {
        "benchmark": "resume_cost",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "early_step": a.early,
        "late_step": a.late,
        "batch": a.batch,
        "workers": a.workers,
        "base_training_s": round(train_s, 1),
        "runs": runs,
        "median_to_first_step_s": med,
        "late_over_early": round(med["late"] / med["early"], 3),
        "target": "late_over_early <= 1.2 and decoded_and_dropped <= block_rows (256) per worker",
    }
    text = json.dumps(report, indent=2)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
