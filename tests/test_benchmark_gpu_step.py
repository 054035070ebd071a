"""benchmarks/gpu_step.py keeps working between GPU sessions: its CPU debug path runs the same code."""

from __future__ import annotations

import json

from benchmarks import gpu_step


def test_gpu_step_cpu_debug_path(capsys, tmp_path):
    out = tmp_path / "gpu_step.json"
    rc = gpu_step.main(
        [
            "--device",
            "cpu",
            "--preset",
            "aim-test",
            "--batch-sizes",
            "4",
            "--steps",
            "3",
            "--warmup",
            "1",
            "--impls",
            "sdpa,flex",
            "--compile",
            "none",
            "--json-out",
            str(out),
        ]
    )
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == report  # the file is the final report, not a partial one
    runs = {r["attn_impl"]: r for r in report["runs"]}
    sdpa = runs["sdpa"]
    assert sdpa["batch"] == 4 and sdpa["images_per_s"] > 0
    lo, hi = sdpa["ms_per_step_range"]
    assert lo <= sdpa["ms_per_step"] <= hi
    assert "error" in runs["flex"]  # FlexAttention has no CPU backward: recorded, not raised
    assert report["flex_vs_sdpa_forward_check"]["max_abs_diff"] < 1e-4  # flex forward matches SDPA
    assert report["best"]["attn_impl"] == "sdpa" and report["flops_per_image"]["train"] > 0
