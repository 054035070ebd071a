"""`aimctl model ...`: inspect presets without materialising them."""

from __future__ import annotations

import json

import typer

from pipelines.cli_common import fail

app = typer.Typer(help="Inspect AIM model presets (sizes, FLOPs).", no_args_is_help=True)


def _parse_sets(items: list[str]) -> dict:
    import yaml

    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            fail(f"--set {item!r}: expected KEY=VALUE, e.g. depth=12")
        out[key] = yaml.safe_load(raw)
    return out


@app.command("info")
def info(preset: str = typer.Argument(..., help="preset name, e.g. aim-600m or aim-tiny"),
         set_: list[str] = typer.Option([], "--set", help="override a model field, e.g. --set depth=12"),
         as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Parameter counts (trunk, head) and FLOPs per image, computed on the meta device."""
    import dataclasses

    import torch

    from aim_core import build_model

    try:
        with torch.device("meta"):
            model = build_model(preset, **_parse_sets(set_))
    except (ValueError, TypeError) as e:
        fail(str(e))
    counts, flops = model.param_counts(), model.flops_per_image()
    out = {"preset": preset, "params_trunk": counts["trunk"], "params_head": counts["head"],
           "params_total": counts["total"], "flops_per_image": flops["forward"],
           "train_flops_per_image": flops["train"], "num_patches": model.config.num_patches,
           "config": dataclasses.asdict(model.config)}
    if as_json:
        print(json.dumps(out))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{preset}")
    t.add_column("quantity")
    t.add_column("value", justify="right")
    for k in ("params_trunk", "params_head", "params_total", "flops_per_image", "train_flops_per_image", "num_patches"):
        t.add_row(k, f"{out[k]:,}")
    Console().print(t)


@app.command("list")
def list_presets() -> None:
    """List the registered presets."""
    from aim_core import PRESETS

    for name, c in PRESETS.items():
        print(f"{name:10s} width={c.width} depth={c.depth} heads={c.num_heads} img={c.img_size} patch={c.patch_size}")
