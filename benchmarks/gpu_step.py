"""AIM training step on one GPU: images/s, MFU, peak memory, FlexAttention prefix kernel vs SDPA.

    python -m benchmarks.gpu_step                     # CUDA: aim-600m, bf16 autocast, batch 64 (falls back on OOM)
    python -m benchmarks.gpu_step --device cpu --preset aim-test   # debug: the same code paths on the CPU

Without CUDA (and without `--device cpu`) it prints `{"skipped": "no CUDA"}` and exits 0.

A step is: prefix lengths drawn, forward (bf16 autocast) + normalised-pixel loss, backward, gradient
clipping at 1.0, fused AdamW (on CUDA), zero_grad; nothing in the step reads a value back to the host.
Variants: attention implementation {flex (FlexAttention BlockMask for the prefix mask), sdpa (SDPA with a
boolean (B,1,K,K) mask)} x {eager, torch.compile of every trunk and head block, and with `--compile model`
forward + loss compiled as one graph}. Each variant: warm-up steps, then `--steps` timed steps, each
between two CUDA events and one synchronisation at the end; ms_per_step is the median step. MFU = images/s x
`model.flops_per_image()["train"]` (analytic, 3x forward, full attention matrix) / peak bf16 dense
FLOP/s of the GPU (looked up by name; unknown GPU -> MFU null); `fraction_of_measured_matmul` divides by the
rate of one 8192^3 bf16 matrix product measured on the same card at start instead. Peak memory is
`torch.cuda.max_memory_allocated` for that variant. One step per variant is also run under
`torch.cuda.set_sync_debug_mode("warn")` and the host-device synchronisations it reports are counted.

Finally a forward-only check compares the flex and sdpa predictions on one prefix mask
(`flex_vs_sdpa_forward_check`; on the CPU this is the only FlexAttention path that runs, as it has no
CPU backward, so the flex training variants record that error there).

Prints one JSON document on stdout (progress on stderr); `--json-out FILE` also rewrites FILE after
every variant so a run cut short still leaves its figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import statistics
import sys
import time
import warnings

import torch

import aim_core

# Peak dense bf16 tensor FLOP/s (no sparsity), by a substring of torch.cuda.get_device_name().
PEAK_BF16 = [
    ("H200", 989e12),  # same tensor cores as the H100 SXM
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM / HBM3
    ("GH200", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("A10G", 70e12),
]


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def peak_flops(device: torch.device) -> tuple[str, float | None]:
    if device.type != "cuda":
        return platform.processor() or platform.machine(), None
    name = torch.cuda.get_device_name(device)
    for key, peak in PEAK_BF16:
        if key in name:
            return name, peak
    return name, None


def measured_matmul_tflops(device: torch.device, n: int = 8192, reps: int = 10) -> float | None:
    """The card's bf16 matrix-product rate on random data (one n x n x n product, median of `reps`), TFLOP/s."""
    if device.type != "cuda":
        return None
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16, generator=g)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16, generator=g)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    del a, b
    torch.cuda.empty_cache()
    return round(2 * n**3 / statistics.median(times) / 1e12, 1)


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def err_str(e: BaseException) -> str:
    s = f"{type(e).__name__}: {e}"
    return s if len(s) < 1500 else s[:1500] + " ..."


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def set_compiled(model: aim_core.AIM, on: bool) -> None:
    """torch.compile every trunk block and every head block (small graphs; the mask stays an input)."""
    for blk in model.repeated_blocks():
        if on:
            blk.compile()
        else:
            blk._compiled_call_impl = None  # back to eager (nn.Module.compile keeps it here)


def forward_loss(model: aim_core.AIM, images: torch.Tensor, prefix_len: torch.Tensor | None) -> torch.Tensor:
    with torch.autocast(images.device.type, dtype=torch.bfloat16):
        preds = model(images, prefix_len)
    return model.loss_from_predictions(images, preds, prefix_len).loss


def make_step(
    model: aim_core.AIM, opt: torch.optim.Optimizer, images: torch.Tensor, clip: float | None, whole_model: bool = False
):
    """One training step; `whole_model` compiles forward + loss as one graph (backward through AOTAutograd)."""
    params = [p for p in model.parameters() if p.requires_grad]
    device_type = images.device.type
    fwd = torch.compile(forward_loss) if whole_model else forward_loss

    def step() -> torch.Tensor:
        prefix_len = model.sample_prefix_len(images.shape[0])
        loss = fwd(model, images, prefix_len)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip, foreach=device_type == "cuda")
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def count_syncs(step, device: torch.device) -> tuple[int | None, list[str]]:
    """Host-device synchronisations in one step, as reported by CUDA sync debug mode, and where they came from."""
    if device.type != "cuda":
        return None, []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    sync(device)
    hits = [w for w in caught if "synchroniz" in str(w.message).lower()]
    return len(hits), sorted({f"{os.path.relpath(w.filename)}:{w.lineno}" for w in hits})


def run_variant(model, opt, cfg_base, impl: str, comp: str, batch: int, a, device) -> dict:
    model.config = dataclasses.replace(cfg_base, attn_impl=impl)
    out: dict = {"attn_impl": impl, "compile": comp, "batch": batch}
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    g = torch.Generator(device="cpu").manual_seed(0)
    images = torch.randn(batch, 3, cfg_base.img_size, cfg_base.img_size, generator=g).to(device)
    step = make_step(model, opt, images, a.clip, whole_model=comp == "model")
    t0 = time.perf_counter()
    for _ in range(a.warmup):
        loss = step()
    sync(device)
    out["warmup_s"] = round(time.perf_counter() - t0, 2)
    if not torch.isfinite(loss).item():
        raise RuntimeError(f"non-finite loss {loss.item()}")
    # Per-step times from CUDA events recorded around each step, read after one final synchronisation
    # (host clock per step on the CPU); the median is the figure, the mean of the whole run is kept beside it.
    times = []
    t0 = time.perf_counter()
    if device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(a.steps)]
        for ev0, ev1 in events:
            ev0.record()
            step()
            ev1.record()
        sync(device)
        times = [ev0.elapsed_time(ev1) / 1e3 for ev0, ev1 in events]
    else:
        for _ in range(a.steps):
            t1 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t1)
    mean = (time.perf_counter() - t0) / a.steps
    dt = statistics.median(times)
    out["ms_per_step"] = round(1e3 * dt, 2)
    out["ms_per_step_mean"] = round(1e3 * mean, 2)
    out["ms_per_step_range"] = [round(1e3 * min(times), 2), round(1e3 * max(times), 2)]
    out["images_per_s"] = round(batch / dt, 2)
    flops = model.flops_per_image()["train"]
    out["tflops_per_s"] = round(batch * flops / dt / 1e12, 2)
    _, peak = peak_flops(device)
    out["mfu"] = round(batch * flops / dt / peak, 4) if peak else None
    if a.matmul_tflops:
        out["fraction_of_measured_matmul"] = round(out["tflops_per_s"] / a.matmul_tflops, 4)
    if device.type == "cuda":
        out["peak_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    out["host_syncs_per_step"], where = count_syncs(step, device)
    if where:
        out["host_sync_sites"] = where
    out["final_loss"] = round(float(loss), 4)
    return out


@torch.no_grad()
def flex_forward_check(model, cfg_base, device: torch.device) -> dict:
    """Forward only (FlexAttention has no CPU backward): flex vs sdpa predictions on the same prefix mask."""
    try:
        g = torch.Generator(device="cpu").manual_seed(1)
        x = torch.randn(2, 3, cfg_base.img_size, cfg_base.img_size, generator=g).to(device)
        s = model.sample_prefix_len(2, g)
        out = {}
        for impl in ("flex", "sdpa"):
            model.config = dataclasses.replace(cfg_base, attn_impl=impl)
            out[impl] = model(x, s).float()
        return {"max_abs_diff": float((out["flex"] - out["sdpa"]).abs().max())}
    except Exception as e:  # noqa: BLE001
        return {"error": err_str(e)}
    finally:
        model.config = cfg_base


def free_grads_and_state(model, opt) -> None:
    opt.zero_grad(set_to_none=True)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (debug)")
    p.add_argument("--preset", default="aim-600m")
    p.add_argument("--batch-sizes", default="64,48,32,16,8", help="tried in order until one fits")
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--impls", default="flex,sdpa")
    p.add_argument(
        "--compile",
        default="none,blocks",
        help="comma list of none (eager), blocks (each trunk and head block), model (forward + loss as one graph)",
    )
    p.add_argument("--clip", type=float, default=1.0, help="gradient clip norm (0: off)")
    p.add_argument("--max-seconds", type=float, default=420.0, help="skip variants that would start after this")
    p.add_argument("--json-out", default=None)
    a = p.parse_args(argv)

    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print(json.dumps({"benchmark": "gpu_step", "skipped": "no CUDA"}))
        return 0
    device = torch.device(a.device)
    start = time.perf_counter()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    cfg = aim_core.resolve_config(a.preset)
    torch.manual_seed(0)
    with torch.device(device):
        model = aim_core.build_model(a.preset).train()
    cfg = model.config
    opt = torch.optim.AdamW(
        model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.05, fused=device.type == "cuda"
    )
    name, peak = peak_flops(device)
    a.matmul_tflops = measured_matmul_tflops(device)
    report: dict = {
        "benchmark": "gpu_step",
        "preset": a.preset,
        "device": name,
        "peak_bf16_flops": peak,
        "measured_bf16_matmul_tflops": a.matmul_tflops,
        "params": model.param_counts(),
        "flops_per_image": model.flops_per_image(),
        "tokens": cfg.num_patches,
        "steps": a.steps,
        "warmup": a.warmup,
        "clip": a.clip,
        "env": {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version()},
        "runs": [],
    }

    def dump() -> None:
        if a.json_out:
            tmp = a.json_out + ".tmp"
            with open(tmp, "w") as f:
                json.dump(report, f, indent=2)
            os.replace(tmp, a.json_out)

    batches = [int(b) for b in a.batch_sizes.split(",") if b]
    compile_modes = [c for c in a.compile.split(",") if c]
    for comp in compile_modes:
        if comp not in ("none", "blocks", "model"):
            p.error(f"--compile takes none, blocks and/or model, not {comp!r}")
        set_compiled(model, comp == "blocks")
        for impl in [i for i in a.impls.split(",") if i]:
            if time.perf_counter() - start > a.max_seconds:
                report["runs"].append({"attn_impl": impl, "compile": comp, "skipped": "time budget"})
                continue
            res: dict = {"attn_impl": impl, "compile": comp}
            for i, b in enumerate(batches):
                try:
                    res = run_variant(model, opt, cfg, impl, comp, b, a, device)
                    batches = batches[i:]  # later variants start from the batch that fitted
                    break
                except Exception as e:  # noqa: BLE001 - OOM falls back, anything else is recorded
                    free_grads_and_state(model, opt)
                    if is_oom(e):
                        log(f"[{impl}/{comp}] batch {b}: out of memory")
                        res = {"attn_impl": impl, "compile": comp, "error": f"OOM down to batch {b}"}
                        continue
                    res = {"attn_impl": impl, "compile": comp, "batch": b, "error": err_str(e)}
                    break
            log(f"[{impl}/{comp}] {res}")
            report["runs"].append(res)
            dump()
    set_compiled(model, False)
    model.config = cfg
    if "flex" in a.impls.split(","):
        report["flex_vs_sdpa_forward_check"] = flex_forward_check(model, cfg, device)

    ok = {(r["attn_impl"], r["compile"]): r for r in report["runs"] if "images_per_s" in r}
    cmp = {}
    for comp in compile_modes:
        f, s = ok.get(("flex", comp)), ok.get(("sdpa", comp))
        if f and s:
            cmp[f"flex_vs_sdpa_{comp}"] = round(f["images_per_s"] / s["images_per_s"], 3)
    if ok:
        best = max(ok.values(), key=lambda r: r["images_per_s"])
        report["best"] = {
            k: best.get(k) for k in ("attn_impl", "compile", "batch", "images_per_s", "mfu", "peak_mem_gib")
        }
    report["throughput_ratios"] = cmp
    report["wall_s"] = round(time.perf_counter() - start, 1)
    dump()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
