"""`aimctl model ...`: inspect presets without materialising them; import / export Apple's ml-aim weights."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from pipelines.cli_common import fail, load_or_exit

app = typer.Typer(
    help="Inspect AIM model presets (sizes, FLOPs); import / export Apple's published AIM weights.",
    no_args_is_help=True,
)


def _parse_sets(items: list[str]) -> dict:
    """Model fields from `--set depth=12` (the experiments' parser, so values are typed the same)."""
    from pipelines.config_io import ConfigError, apply_overrides

    try:
        return apply_overrides({}, items)
    except ConfigError as e:
        fail(str(e))


@app.command("info")
def info(
    preset: str = typer.Argument(None, help="preset name, e.g. aim-600m or aim-tiny (or give --experiment)"),
    experiment: Path = typer.Option(
        None,
        "--experiment",
        "-e",
        help="an experiment YAML: the model its runs train (the preset, then its model and target sections)",
    ),
    set_: list[str] = typer.Option(
        [], "--set", help="override a model field, e.g. --set depth=12 (with --experiment: model.depth=12)"
    ),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Parameter counts (trunk, head) and FLOPs per image, computed on the meta device."""
    import dataclasses

    import torch

    from aim_core import AIM, resolve_config

    if (preset is None) == (experiment is None):
        fail("give a preset or --experiment YAML (one of them)")
    if experiment is not None:  # the same resolution as a pipeline run: ExperimentConfig.model_overrides()
        cfg = load_or_exit(experiment, set_)
        preset, overrides = cfg.model.preset, cfg.model_overrides()
    else:
        overrides = _parse_sets(set_)
    try:
        with torch.device("meta"):
            model = AIM(resolve_config(preset, **overrides))
    except (ValueError, TypeError) as e:
        fail(str(e))
    counts, flops = model.param_counts(), model.flops_per_image()
    out = {
        "preset": preset,
        "params_trunk": counts["trunk"],
        "params_head": counts["head"],
        "params_total": counts["total"],
        "flops_per_image": flops["forward"],
        "train_flops_per_image": flops["train"],
        "num_patches": model.config.num_patches,
        "config": dataclasses.asdict(model.config),
    }
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


_IMPORT_HELP = (
    "Apple's ml-aim (v1) weights -> a checkpoint directory (state.pt + meta.json) for `aimctl probe --checkpoint`."
    "\n\nThe trunk is imported under this project's names (nothing is transposed); the attentive probe head, "
    "when given (or inside SRC), is kept in the checkpoint as it came. Probe it with an experiment whose "
    "model.preset is the preset printed here: `aimctl probe EXPERIMENT.yaml --checkpoint OUT`."
)
_EXPORT_HELP = (
    "A checkpoint's trunk -> Apple's ml-aim layout (loads into `aim.v1.torch.models.aim_*` as the backbone)."
    "\n\nTrunk only: the pre-training head and the target's buffers have no place in Apple's layout. Apple's "
    "LayerNorms use eps 1e-6: a trunk trained with another model.norm_eps computes slightly different features there."
)


@app.command("import", help=_IMPORT_HELP)
def import_(
    src: str = typer.Argument(
        ...,
        help="Apple's backbone weights, .pth or .safetensors, local or s3://, e.g. "
        "aim_600m_2bimgs_attnprobe_backbone.pth",
    ),
    out: str = typer.Option(..., "--out", help="checkpoint directory to write (local or s3://)"),
    preset: str = typer.Option(
        None,
        "--preset",
        help="preset the weights must fit (default: inferred from the shapes: width, depth, patch, MLP ratio)",
    ),
    head: str = typer.Option(
        None,
        "--head",
        help="Apple's attentive-probe head file to keep with the trunk, "
        "e.g. aim_600m_2bimgs_attnprobe_head_best_layers.pth",
    ),
) -> None:
    from pipelines.model_io import CheckpointError, import_ml_aim
    from pipelines.storage import StorageError

    try:
        res = import_ml_aim(src, out, preset=preset, head=head)
    except (CheckpointError, StorageError) as e:
        fail(str(e))
    probe = f", attentive probe head ({res.probe_classes} classes) kept" if res.probe_classes else ""
    print(f"imported {src} as {res.preset} ({res.tensors} trunk tensors{probe}) -> {res.out}")
    print(
        f"probe it with an experiment whose model.preset is {res.preset}: aimctl probe EXPERIMENT.yaml "
        f"--checkpoint {res.out}"
    )


@app.command("export", help=_EXPORT_HELP)
def export(
    ckpt: str = typer.Argument(..., help="checkpoint directory (a run's checkpoint_* or an imported one)"),
    fmt: str = typer.Option("ml-aim", "--format", help="output layout; only ml-aim (Apple's apple/ml-aim v1)"),
    out: str = typer.Option(..., "--out", help="file to write: .pth (torch.save) or .safetensors, local or s3://"),
    head_out: str = typer.Option(
        None,
        "--head-out",
        help="also write the attentive probe head that an imported checkpoint kept, as Apple's head file",
    ),
) -> None:
    from pipelines.model_io import CheckpointError, export_ml_aim
    from pipelines.storage import StorageError

    if fmt != "ml-aim":
        fail(f"--format {fmt!r}: only ml-aim is supported")
    try:
        res = export_ml_aim(ckpt, out, head_out=head_out)
    except (CheckpointError, StorageError) as e:
        fail(str(e))
    print(f"exported {res.tensors} trunk tensors of {ckpt} in ml-aim layout -> {res.out}")
    groups = ", ".join(sorted({k.split(".")[0] + ".*" for k in res.left_out})) or "none in this checkpoint"
    print(
        f"trunk only: the pre-training head has no place in Apple's layout (left out: {len(res.left_out)} "
        f"tensors, {groups})"
    )
    if res.probe_out:
        print(f"attentive probe head -> {res.probe_out}")
