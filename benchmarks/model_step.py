"""One training step of AIM (trunk + MLP head, prefix mask) against timm's VisionTransformer.

    python -m benchmarks.model_step [--quick] [--no-compile] [--repeats N] ...

A step is forward + loss + backward + AdamW step + zero_grad, on a fixed batch of random
(normalised) images, with a fresh prefix length per image drawn every step. The baseline is timm's
`VisionTransformer` with the same width / depth / heads / patch / tokens (no class token, bias-free
linears and a LayerNorm after the patch projection like AIM), the same boolean prefix mask passed as
`attn_mask`, a per-patch residual MLP head of the same shape and cost as AIM's, and the same
normalised-pixel MSE on the non-prefix positions. Both models run the same AdamW.

Variants: {fp32, bf16 autocast} x {eager, torch.compile of forward+loss} x {aim, timm}. Every
variant is warmed up first (that is where compilation happens), then all variants are timed
round-robin in the same process (`--repeats` rounds, the order rotated every round) so that load
from other jobs on the machine hits them alike. Reported: median ms/step (and the process CPU time
per step), images/s, and ratios AIM/timm in throughput (= timm ms / AIM ms; > 1 means AIM is
faster) as a ratio of medians, the median of per-round ratios, the ratio of the fastest steps and
the ratio of median CPU times. A torch.compile failure is recorded as its error string.
With bf16, one more variant `aim_sdpa/bf16/eager` times AIM with its explicit bf16 CPU attention
switched off (SDPA, as before that change); `--no-ablate` drops it. On a shared 2-core machine,
`--threads 1` gives far steadier figures (no OpenMP thread waiting on a descheduled sibling).

Prints one JSON document on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

import aim_core
from aim_core import layers

DEFAULT = dict(
    img=32, patch=4, width=192, depth=12, heads=3, head_width=256, head_depth=2, batch=64, repeats=11, warmup=2
)
QUICK = dict(img=16, patch=4, width=64, depth=2, heads=2, head_width=64, head_depth=1, batch=8, repeats=5, warmup=1)


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


# ---- the timm baseline -------------------------------------------------------------------------
class PatchMLPHead(nn.Module):
    """Per-patch residual MLP head with the same layers (so the same FLOPs) as AIM's `mlp` head."""

    def __init__(
        self, dim: int, out_dim: int, width: int, depth: int, num_patches: int, mlp_ratio: float = 4.0
    ) -> None:
        super().__init__()
        from timm.layers import Mlp

        self.proj_in = nn.Linear(dim, width, bias=False)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, width))
        self.norms1 = nn.ModuleList(nn.LayerNorm(width) for _ in range(depth))
        self.norms2 = nn.ModuleList(nn.LayerNorm(width) for _ in range(depth))
        self.mlps = nn.ModuleList(Mlp(width, int(width * mlp_ratio), bias=False) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj_in(x) + self.pos_embed
        for n1, n2, mlp in zip(self.norms1, self.norms2, self.mlps):
            x = x + n1(x)
            x = x + mlp(n2(x))
        return self.out(self.norm(x))


class TimmBaseline(nn.Module):
    def __init__(self, a: argparse.Namespace) -> None:
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        self.patch = a.patch
        self.num_patches = (a.img // a.patch) ** 2
        self.vit = VisionTransformer(
            img_size=a.img,
            patch_size=a.patch,
            embed_dim=a.width,
            depth=a.depth,
            num_heads=a.heads,
            mlp_ratio=4.0,
            num_classes=0,
            global_pool="",
            class_token=False,
            qkv_bias=False,
            proj_bias=False,
            embed_norm_layer="layernorm",
            final_norm=True,
        )
        self.head = PatchMLPHead(a.width, 3 * a.patch * a.patch, a.head_width, a.head_depth, self.num_patches)

    def forward(self, images: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.vit.forward_features(images, attn_mask=attn_mask))

    def targets(self, images: torch.Tensor) -> torch.Tensor:
        """MAE-style patchify + per-patch normalisation (unbiased variance, eps 1e-6)."""
        b, c, h, w = images.shape
        p = self.patch
        x = images.float().reshape(b, c, h // p, p, w // p, p)
        x = torch.einsum("nchpwq->nhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)
        mean, var = x.mean(-1, keepdim=True), x.var(-1, keepdim=True)
        return (x - mean) / (var + 1e-6) ** 0.5


def timm_fwd_loss(model: TimmBaseline, images: torch.Tensor, prefix_len: torch.Tensor, bf16: bool) -> torch.Tensor:
    k = model.num_patches
    idx = torch.arange(k, device=images.device)
    may_attend = (idx[None, :] <= idx[:, None])[None, None] | (
        idx[None, None, None, :] < prefix_len[:, None, None, None]
    )
    with torch.autocast("cpu" if images.device.type == "cpu" else images.device.type, torch.bfloat16, enabled=bf16):
        preds = model(images, may_attend)
    pred, target = preds[:, :-1], model.targets(images)[:, 1:]
    use = (idx[1:][None, :] >= prefix_len[:, None]).float()
    per_pos = ((pred.float() - target) ** 2).mean(-1)
    return (per_pos * use).sum() / use.sum().clamp_min(1.0)


def aim_fwd_loss(model: aim_core.AIM, images: torch.Tensor, prefix_len: torch.Tensor, bf16: bool) -> torch.Tensor:
    with torch.autocast(images.device.type, torch.bfloat16, enabled=bf16):
        preds = model(images, prefix_len)
    return model.loss_from_predictions(images, preds, prefix_len).loss


# ---- variants ----------------------------------------------------------------------------------
@dataclass
class Variant:
    model: str  # aim | timm
    dtype: str  # fp32 | bf16
    mode: str  # eager | compile
    step: Callable[[], torch.Tensor]
    times: list[float] = field(default_factory=list)
    cpu_times: list[float] = field(default_factory=list)  # process CPU time (all threads) per step
    warmup_s: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def name(self) -> str:
        return f"{self.model}/{self.dtype}/{self.mode}"


def make_step(
    fwd_loss: Callable,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    images: torch.Tensor,
    sample_prefix: Callable[[], torch.Tensor],
    bf16: bool,
) -> Callable[[], torch.Tensor]:
    def step() -> torch.Tensor:
        prefix_len = sample_prefix()
        loss = fwd_loss(model, images, prefix_len, bf16)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def with_sdpa(step: Callable[[], torch.Tensor], model: nn.Module) -> Callable[[], torch.Tensor]:
    """Run `step` with the explicit bf16 CPU attention of `model`'s layers switched off (SDPA everywhere)."""
    attns = [m for m in model.modules() if isinstance(m, layers.Attention)]

    def run_sdpa() -> torch.Tensor:
        old = [m.explicit_lowp_cpu for m in attns]
        for m in attns:
            m.explicit_lowp_cpu = False
        try:
            return step()
        finally:
            for m, flag in zip(attns, old):
                m.explicit_lowp_cpu = flag

    return run_sdpa


def build(a: argparse.Namespace):
    torch.manual_seed(0)
    aim = aim_core.build_model(
        "aim-tiny",
        img_size=a.img,
        patch_size=a.patch,
        width=a.width,
        depth=a.depth,
        num_heads=a.heads,
        head="mlp",
        head_width=a.head_width,
        head_depth=a.head_depth,
        target="norm_pixel",
        attention="prefix",
        order="raster",
        attn_impl="sdpa",
    ).train()
    torch.manual_seed(0)
    ref = TimmBaseline(a).train()
    return aim, ref


def adamw(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.05)


def err_str(e: BaseException) -> str:
    s = f"{type(e).__name__}: {e}"
    return s if len(s) < 2000 else s[:2000] + " ..."


def run(a: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    aim, ref = build(a)
    images = torch.randn(a.batch, 3, a.img, a.img)
    k = aim.config.num_patches
    opts = {"aim": adamw(aim), "timm": adamw(ref)}
    models = {"aim": aim, "timm": ref}
    fwd = {"aim": aim_fwd_loss, "timm": timm_fwd_loss}
    samplers = {"aim": lambda: aim.sample_prefix_len(a.batch), "timm": lambda: torch.randint(1, k, (a.batch,))}

    variants: list[Variant] = []
    for dtype in a.dtypes:
        for mode in a.modes:
            for name in ("aim", "timm"):
                fn = fwd[name]
                if mode == "compile":
                    try:
                        fn = torch.compile(fn)
                    except Exception as e:  # noqa: BLE001 - recorded, not fatal
                        variants.append(Variant(name, dtype, mode, lambda: None, error=err_str(e)))
                        continue
                step = make_step(fn, models[name], opts[name], images, samplers[name], dtype == "bf16")
                variants.append(Variant(name, dtype, mode, step))
            if dtype == "bf16" and mode == "eager" and a.ablate:
                # AIM as it was before its bf16 CPU attention change: SDPA's flash kernel in every layer.
                step = with_sdpa(make_step(aim_fwd_loss, aim, opts["aim"], images, samplers["aim"], True), aim)
                variants.append(Variant("aim_sdpa", dtype, mode, step))

    for v in variants:  # warm-up (compilation happens here)
        if v.error:
            continue
        for _ in range(a.warmup):
            t0 = time.perf_counter()
            try:
                loss = v.step()
            except Exception as e:  # noqa: BLE001
                v.error = err_str(e)
                log(f"[warm-up] {v.name}: FAILED {v.error.splitlines()[0]}")
                break
            v.warmup_s.append(round(time.perf_counter() - t0, 3))
            if not torch.isfinite(loss):
                v.error = f"non-finite loss {loss.item()}"
                break
        if not v.error:
            log(f"[warm-up] {v.name}: {v.warmup_s} s")

    live = [v for v in variants if not v.error]
    load_before = os.getloadavg()
    for r in range(a.repeats):
        order = live[r % len(live) :] + live[: r % len(live)] if live else []
        for v in order:
            c0, t0 = time.process_time(), time.perf_counter()
            v.step()
            v.times.append(time.perf_counter() - t0)
            v.cpu_times.append(time.process_time() - c0)
        log(f"[round {r + 1}/{a.repeats}] " + "  ".join(f"{v.name} {1e3 * v.times[-1]:.0f}" for v in live))
    load_after = os.getloadavg()

    results = {}
    for v in variants:
        entry: dict = {"model": v.model, "dtype": v.dtype, "mode": v.mode}
        if v.error:
            entry["error"] = v.error
        else:
            med = statistics.median(v.times)
            entry.update(
                ms_per_step=round(1e3 * med, 2),
                images_per_s=round(a.batch / med, 1),
                min_ms=round(1e3 * min(v.times), 2),
                max_ms=round(1e3 * max(v.times), 2),
                cpu_ms_per_step=round(1e3 * statistics.median(v.cpu_times), 2),
                times_ms=[round(1e3 * t, 1) for t in v.times],
                warmup_s=v.warmup_s,
            )
        results[v.name] = entry

    def ratio(num: str, den: str) -> dict | None:
        """AIM/timm throughput: den's time over num's time (num = the AIM variant)."""
        va = next((v for v in live if v.name == num), None)
        vb = next((v for v in live if v.name == den), None)
        if va is None or vb is None:
            return None
        paired = [tb / ta for ta, tb in zip(va.times, vb.times)]
        return {
            "ratio_of_medians": round(statistics.median(vb.times) / statistics.median(va.times), 3),
            "median_paired_ratio": round(statistics.median(paired), 3),
            "ratio_of_min": round(min(vb.times) / min(va.times), 3),
            "cpu_time_ratio_of_medians": round(statistics.median(vb.cpu_times) / statistics.median(va.cpu_times), 3),
        }

    ratios = {}
    for dtype in a.dtypes:
        ratios[dtype] = {
            "aim_eager_vs_timm_eager": ratio(f"aim/{dtype}/eager", f"timm/{dtype}/eager"),
            "aim_compile_vs_timm_eager": ratio(f"aim/{dtype}/compile", f"timm/{dtype}/eager"),
            "aim_compile_vs_timm_compile": ratio(f"aim/{dtype}/compile", f"timm/{dtype}/compile"),
            "aim_compile_vs_aim_eager": ratio(f"aim/{dtype}/compile", f"aim/{dtype}/eager"),
        }
        if dtype == "bf16" and a.ablate:
            ratios[dtype]["aim_eager_vs_aim_sdpa_eager"] = ratio("aim/bf16/eager", "aim_sdpa/bf16/eager")
            ratios[dtype]["aim_sdpa_eager_vs_timm_eager"] = ratio("aim_sdpa/bf16/eager", "timm/bf16/eager")
        targets = {}
        for key, label, need in (
            ("aim_eager_vs_timm_eager", ">=1.0x timm eager", 1.0),
            ("aim_compile_vs_timm_eager", ">=1.2x timm eager (AIM compiled)", 1.2),
        ):
            r = ratios[dtype][key]
            if r:  # judged on wall-clock medians and, steadier on a shared machine, on CPU-time medians
                targets[label] = {
                    "wall": r["ratio_of_medians"] >= need,
                    "cpu_time": r["cpu_time_ratio_of_medians"] >= need,
                }
        ratios[dtype]["targets_met"] = targets

    def nparams(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    import timm

    return {
        "benchmark": "model_step",
        "what": "fwd+loss+bwd+AdamW step, AIM (trunk + MLP head, prefix mask, norm_pixel MSE) vs timm "
        "VisionTransformer + same-cost per-patch MLP head, same mask and loss",
        "shape": {
            k_: getattr(a, k_)
            for k_ in ("img", "patch", "width", "depth", "heads", "head_width", "head_depth", "batch")
        }
        | {"tokens": k},
        "params": {"aim": nparams(aim), "timm": nparams(ref)},
        "aim_flops_per_image_train": aim.flops_per_image()["train"],
        "repeats": a.repeats,
        "warmup": a.warmup,
        "quick": a.quick,
        "results": results,
        "ratios_aim_over_timm_throughput": ratios,
        "env": {
            "torch": torch.__version__,
            "timm": timm.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "processor": _cpu_name(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "loadavg_before_timing": [round(x, 2) for x in load_before],
            "loadavg_after_timing": [round(x, 2) for x in load_after],
        },
    }


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny shape, few repeats (smoke test)")
    p.add_argument("--no-compile", action="store_true", help="eager variants only")
    p.add_argument("--dtypes", default="fp32,bf16", help="comma list of fp32,bf16")
    p.add_argument(
        "--no-ablate",
        dest="ablate",
        action="store_false",
        help="skip the extra variant aim_sdpa/bf16/eager (AIM with SDPA instead of its bf16 CPU attention)",
    )
    for k_ in DEFAULT:
        p.add_argument(f"--{k_.replace('_', '-')}", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    a = p.parse_args(argv)
    base = QUICK if a.quick else DEFAULT
    for k_, v in base.items():
        if getattr(a, k_) is None:
            setattr(a, k_, v)
    a.dtypes = [d for d in a.dtypes.split(",") if d]
    if any(d not in ("fp32", "bf16") for d in a.dtypes):
        p.error("--dtypes takes fp32 and/or bf16")
    a.modes = ["eager"] if a.no_compile else ["eager", "compile"]
    if a.repeats < 1 or a.warmup < 1:
        p.error("--repeats and --warmup must be >= 1")
    return a


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    out = run(a)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
