"""Time and cost estimate for the paper's ablation grid (and one full AIM-0.6B run), printed as JSON.

    python -m infra.estimate                      # defaults below; every assumption is in the output
    python infra/estimate.py --mfu 0.35 --price-ondemand 6.0 --nodes 4

FLOPs come from the model itself (`AIM.flops_per_image()["train"]`, the number `aimctl model info --json`
prints as train_flops_per_image: 3x the analytic forward, no activation recomputation). Time is
FLOPs / (GPUs x peak x MFU). The trials come from experiments/ablations/paper.yaml when it exists (each
trial's own model, so head/target variants are costed separately; a sweep with `seeds:` plans every trial
once per seed, so the cost is multiplied by the number of seeds); otherwise an assumed number of
AIM-0.6B trials. Probing is not counted (minutes per trial against days of pre-training).
"""

from __future__ import annotations

import argparse
import heapq
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# AIM paper (El-Nouby et al., 2024): AIM-0.6B pre-trained 500k steps at batch 4096.
PAPER_FULL_STEPS = 500_000
PAPER_BATCH = 4096
# ASSUMPTION: the ablations use a shorter schedule; we take 100k steps at batch 4096 (1/5 of the full run).
ABLATION_STEPS = 100_000
# ASSUMPTION: distinct trials in the paper's ablation tables when paper.yaml is not there to count.
ASSUMED_TRIALS = 16
H100_BF16_DENSE_TFLOPS = 989.0  # NVIDIA H100 SXM, bf16 dense tensor-core peak
# ASSUMPTIONS (prices change; check your provider): per GPU-hour for 8x H100 nodes (p5.48xlarge-class).
PRICE_ONDEMAND = 6.88  # ~55 USD per node-hour
PRICE_SPOT = 3.00


def train_flops_per_image(model_cfg) -> int:
    import torch

    from aim_core import AIM

    with torch.device("meta"):
        return int(AIM(model_cfg).flops_per_image()["train"])


def _trials_from_sweep(path: Path) -> list[dict] | None:
    """[{trial, seed, preset, train_flops_per_image, sweep_steps, sweep_batch}] or None if the file is absent.
    A seeded sweep's trials are planned once per seed; runs of different seeds are never the same run."""
    if not path.exists():
        return None
    from pipelines.sweep.spec import load_sweep

    _, trials = load_sweep(path)
    out, seen, by_id = [], {}, {}
    for t in trials:
        if t.duplicate_of is not None:  # the sweep already resolved it to the same run as an earlier trial
            by_id[t.duplicate_of]["same_as"].append(t.trial_id)
            continue
        cfg = t.config
        key = _resolved_key(cfg)
        if key in seen:  # e.g. a value equal to the preset's default: the same run as another trial
            seen[key]["same_as"].append(t.trial_id)
            by_id[t.trial_id] = seen[key]
            continue
        row = {
            "trial": t.trial_id,
            "seed": t.seed,
            "preset": cfg.model.preset,
            "train_flops_per_image": train_flops_per_image(cfg.aim_config()),
            "sweep_steps": cfg.schedule.steps,
            "sweep_batch": cfg.optim.batch_size,
            "same_as": [],
        }
        seen[key] = by_id[t.trial_id] = row
        out.append(row)
    return out


def _resolved_key(cfg) -> str:
    """The run a trial really is: every section, with the model resolved against its preset; name/tags aside."""
    import dataclasses

    d = cfg.model_dump(mode="json")
    for k in ("name", "tags", "model"):
        d.pop(k, None)
    d["model"] = dataclasses.asdict(cfg.aim_config())
    return json.dumps(d, sort_keys=True, default=str)


def run_cost(flops: float, a: argparse.Namespace) -> dict:
    per_gpu = a.peak_tflops * 1e12 * a.mfu
    gpu_hours = flops / per_gpu / 3600
    return {
        "train_flops": flops,
        "gpu_hours": round(gpu_hours, 1),
        "node_hours": round(gpu_hours / a.gpus_per_node, 1),
        "wall_hours": round(gpu_hours / a.gpus_per_trial, 1),
        "cost_usd_ondemand": round(gpu_hours * a.price_ondemand),
        "cost_usd_spot": round(gpu_hours * a.price_spot),
    }


def estimate(a: argparse.Namespace) -> dict:
    from aim_core import resolve_config

    base_fpi = train_flops_per_image(resolve_config(a.preset))
    sweep = None if a.no_sweep_file else _trials_from_sweep(Path(a.sweep))
    notes = []
    if sweep is None:
        trials = [
            {"trial": f"assumed-{i}", "preset": a.preset, "train_flops_per_image": base_fpi} for i in range(a.trials)
        ]
        source = f"assumed: {a.trials} trials of {a.preset} ({a.sweep} not found)"
    else:
        trials = sweep
        dup = sum(len(t["same_as"]) for t in trials)
        seeds = sorted({t["seed"] for t in trials})
        source = f"{a.sweep}: {len(trials)} distinct trials"
        if len(seeds) > 1:
            source += f" ({len(seeds)} seeds {seeds} x {len(trials) // len(seeds)} per seed)"
        if dup:
            notes.append(
                f"{dup} trial(s) resolve to the same run as another (listed under same_as) and are counted once"
            )
        small = sorted({t["preset"] for t in trials if t["preset"] != a.preset})
        if small:
            notes.append(f"trials use preset(s) {small}, not {a.preset}: costed with their own FLOPs")
    images = a.steps * a.batch_size
    per_trial = [{**t, **run_cost(t["train_flops_per_image"] * images, a)} for t in trials]
    total_flops = sum(t["train_flops"] for t in per_trial)
    grid = run_cost(total_flops, a)
    grid.pop("wall_hours")
    concurrent = max(1, (a.nodes * a.gpus_per_node) // a.gpus_per_trial)
    # Tune starts trials in grid order as trial slots free up: list scheduling on `concurrent` slots.
    slots = [0.0] * concurrent
    for t in per_trial:
        heapq.heappush(slots, heapq.heappop(slots) + t["wall_hours"])
    grid.update(
        {"trials": len(per_trial), "concurrent_trials": concurrent, "wall_clock_days": round(max(slots) / 24, 1)}
    )
    if sweep is None:  # identical assumed trials: show one
        per_trial = [{**per_trial[0], "trial": "each assumed trial", "count": len(per_trial)}]
    full = run_cost(base_fpi * PAPER_FULL_STEPS * PAPER_BATCH, a)
    return {
        "assumptions": {
            "model": a.preset,
            "train_flops_per_image": base_fpi,
            "ablation_schedule": {
                "steps": a.steps,
                "batch_size": a.batch_size,
                "note": "ASSUMPTION: shorter than the paper's 500k-step run",
            },
            "trials_source": source,
            "gpu": "H100 SXM bf16",
            "peak_tflops_per_gpu": a.peak_tflops,
            "mfu": a.mfu,
            "sustained_tflops_per_gpu": round(a.peak_tflops * a.mfu, 1),
            "gpus_per_node": a.gpus_per_node,
            "gpus_per_trial": a.gpus_per_trial,
            "cluster_nodes": a.nodes,
            "price_per_gpu_hour_usd": {
                "ondemand": a.price_ondemand,
                "spot": a.price_spot,
                "note": "ASSUMPTION: list prices vary by region and date",
            },
            "not_counted": "probes, data decode on CPU nodes, storage, the head node, restarts after spot loss",
        },
        "ablation_grid": grid,
        "per_trial": per_trial,
        "full_aim_600m_run": {"steps": PAPER_FULL_STEPS, "batch_size": PAPER_BATCH, **full},
        "notes": notes,
    }


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sweep", default=str(ROOT / "experiments/ablations/paper.yaml"))
    p.add_argument("--no-sweep-file", action="store_true", help="ignore the sweep file; use --trials x --preset")
    p.add_argument("--preset", default="aim-600m")
    p.add_argument("--trials", type=int, default=ASSUMED_TRIALS)
    p.add_argument("--steps", type=int, default=ABLATION_STEPS)
    p.add_argument("--batch-size", type=int, default=PAPER_BATCH)
    p.add_argument("--mfu", type=float, default=0.40)
    p.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS)
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--gpus-per-trial", type=int, default=8)
    p.add_argument("--nodes", type=int, default=12, help="8-GPU nodes (infra/aws/cluster.yaml: 8 spot + 4 on-demand)")
    p.add_argument("--price-ondemand", type=float, default=PRICE_ONDEMAND, help="USD per GPU-hour (assumption)")
    p.add_argument("--price-spot", type=float, default=PRICE_SPOT, help="USD per GPU-hour (assumption)")
    a = p.parse_args(argv)
    if not 0 < a.mfu <= 1:
        p.error("--mfu must be in (0, 1]")
    return a


def main(argv: list[str] | None = None) -> None:
    print(json.dumps(estimate(parse(argv)), indent=1))


if __name__ == "__main__":
    main()
