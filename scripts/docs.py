"""README figures that cannot drift: tables regenerated from the committed JSON under docs/results/.

Each generated region of README.md sits between `<!-- BEGIN generated: NAME -->` and `<!-- END generated: NAME -->`
and is rewritten from its JSON by `make docs` (`python -m scripts.docs`). `make test` runs
`python -m scripts.docs --check`, which fails (exit 1, naming the regions) when README.md is stale.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "docs" / "results"


def _load(rel: str) -> dict:
    return json.loads((RESULTS / rel).read_text())


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def gpu_step() -> list[str]:
    """Every run of `benchmarks/gpu_step.py` kept under docs/results/gpu_step/ (AIM-0.6B, bf16)."""
    rows = []
    for path in sorted((RESULTS / "gpu_step").glob("*.json")):
        d = json.loads(path.read_text())
        for r in d["runs"]:
            rows.append(
                [
                    f"`{path.name}`",
                    d["device"],
                    r["attn_impl"],
                    r["compile"],
                    str(r["batch"]),
                    f"{r['images_per_s']:.1f}",
                    f"{100 * r['mfu']:.1f}%",
                    f"{r['peak_mem_gib']:.1f}",
                ]
            )
    header = ["file", "GPU", "attention", "compile", "batch", "images/s", "MFU", "peak GiB"]
    return _table(header, rows)


def model_step() -> list[str]:
    """AIM/timm throughput ratios of `benchmarks.model_step` (> 1 = AIM faster)."""
    rel = "model_step/2threads_session5.json"
    d = _load(rel)
    rows = []
    for dtype, comps in d["ratios_aim_over_timm_throughput"].items():
        for name, r in comps.items():
            if name == "targets_met":
                continue
            rows.append(
                [dtype, name.replace("_", " "), f"{r['ratio_of_medians']:.2f}", f"{r['cpu_time_ratio_of_medians']:.2f}"]
            )
    env = d["env"]
    note = f"`docs/results/{rel}`: torch {env['torch']}, {env['torch_threads']} threads, {env['processor']}."
    return [note, "", *_table(["dtype", "comparison", "wall (ratio of medians)", "CPU time"], rows)]


def _count(n: int) -> str:
    return str(n) if n >= 0 else "not measured"  # the 'before' benchmark predates the counter (-1)


def resume_cost() -> list[str]:
    """Time from launch to the first trained step when resuming early vs late (`benchmarks.resume_cost`)."""
    rows = []
    for path in sorted((RESULTS / "resume_cost").glob("*.json")):
        d = json.loads(path.read_text())
        med = d["median_to_first_step_s"]
        late = d["runs"]["late"]
        rows.append(
            [
                f"`{path.name}`",
                f"{med['early']:.1f} s (step {d['early_step']})",
                f"{med['late']:.1f} s (step {d['late_step']})",
                f"{d['late_over_early']:.2f}",
                _count(max(r["decoded_and_dropped"] for r in late)),
            ]
        )
    return _table(
        ["file", "median, early resume", "median, late resume", "late / early", "decoded to drop (late)"], rows
    )


GENERATORS = {"gpu_step": gpu_step, "model_step": model_step, "resume_cost": resume_cost}
REGION = re.compile(r"(<!-- BEGIN generated: (\S+) -->\n)(.*?)(<!-- END generated: \2 -->)", re.S)


def render(text: str) -> tuple[str, list[str]]:
    """README text with every generated region rewritten; the names of the regions whose text changed."""
    stale: list[str] = []

    def sub(m: re.Match) -> str:
        name = m.group(2)
        if name not in GENERATORS:
            raise SystemExit(f"README.md: generated region {name!r} has no generator (known: {', '.join(GENERATORS)})")
        body = "\n".join(GENERATORS[name]()) + "\n"
        if body != m.group(3):
            stale.append(name)
        return m.group(1) + body + m.group(4)

    out = REGION.sub(sub, text)
    missing = sorted(set(GENERATORS) - {m.group(2) for m in REGION.finditer(text)})
    if missing:
        raise SystemExit(f"README.md: no generated region for {', '.join(missing)}")
    return out, stale


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if README.md differs from what the JSON gives")
    a = ap.parse_args(argv)
    text = README.read_text()
    new, stale = render(text)
    if a.check:
        if stale:
            print(f"README.md is stale in: {', '.join(stale)}; run `make docs` and commit", file=sys.stderr)
            return 1
        return 0
    if new != text:
        README.write_text(new)
    print(f"README.md: {len(stale)} region(s) rewritten" + (f" ({', '.join(stale)})" if stale else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
