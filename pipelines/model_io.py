"""Apple's published AIM weights (apple/ml-aim v1) <-> this project's checkpoint directories.

`import_ml_aim` reads an ml-aim backbone (`.pth` or `.safetensors`, local or s3://), optionally its
attentive-probe head, picks the preset that fits the shapes and writes a checkpoint directory
(`state.pt` + `meta.json`) that `aimctl probe --checkpoint` loads. `export_ml_aim` writes a checkpoint's
trunk in Apple's layout. The key mapping itself is `aim_core.ml_aim`. `load_weights` is how probes put a
checkpoint (trained here or imported) into a model, with one-line errors when the two do not fit.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from aim_core import ml_aim
from aim_core.model import AIM
from aim_core.presets import AIMConfig, resolve_config
from pipelines.data.config import S3Config
from pipelines.train.checkpoint import META_FILE, STATE_FILE

__all__ = [
    "CheckpointError",
    "ImportResult",
    "ExportResult",
    "read_weights",
    "import_ml_aim",
    "export_ml_aim",
    "load_weights",
    "TRUNK_ONLY",
]

TRUNK_ONLY = "trunk_only"  # state.pt flag: "model" holds the trunk only (no pre-training head, no target)
_SHAPE_FIELDS = ("patch_size", "width", "depth", "num_heads", "mlp_ratio", "norm_eps")


class CheckpointError(ValueError):
    """A weights file or checkpoint that does not fit what was asked, phrased as one line."""


@dataclass
class ImportResult:
    out: str  # the checkpoint directory written
    preset: str
    tensors: int  # trunk tensors imported
    probe_classes: int | None  # classes of the imported attentive probe, None without one


@dataclass
class ExportResult:
    out: str
    tensors: int  # tensors written
    left_out: list[str]  # our keys with no place in Apple's layout (pre-training head, target buffers)
    probe_out: str | None


def _unwrap(obj: object, where: str) -> dict[str, torch.Tensor]:
    """A plain state dict, also from a {"model": ...} / {"state_dict": ...} wrapper."""
    if isinstance(obj, dict) and len(obj) == 1 and next(iter(obj)) in ("model", "state_dict"):
        obj = next(iter(obj.values()))
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{where}: not a state dict of tensors")
    return obj


def _load_local(path: str, where: str) -> dict[str, torch.Tensor]:
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError:  # pragma: no cover - safetensors comes with timm
            raise CheckpointError(f"{where}: .safetensors needs the safetensors package; pass a .pth") from None
        try:
            return load_file(path)
        except Exception as e:  # noqa: BLE001 - any parse failure is the file's fault
            raise CheckpointError(f"{where}: not a safetensors file ({str(e).splitlines()[0]})") from None
    try:
        try:  # mmap: a 7B backbone is not read into memory twice
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)  # a legacy (non-zip) file, or junk
    except Exception as e:  # noqa: BLE001 - pickle/zip errors, refused globals
        first = (str(e).strip().splitlines() or [""])[0]
        raise CheckpointError(f"{where}: not a torch state dict ({type(e).__name__}: {first})") from None
    return _unwrap(obj, where)


def read_weights(uri: str, s3: S3Config | None = None) -> dict[str, torch.Tensor]:
    """A state dict from a `.pth` (torch.load, weights_only) or `.safetensors` file, local or s3://."""
    from pipelines.storage import is_s3, read_bytes, resolve

    fs, path = resolve(uri, s3)
    if not is_s3(uri):
        if not Path(path).is_file():
            raise CheckpointError(f"{uri}: no such file")
        return _load_local(path, uri)
    with tempfile.TemporaryDirectory() as tmp:
        local = str(Path(tmp, Path(path).name))
        Path(local).write_bytes(read_bytes(fs, path))
        return {k: v.clone() for k, v in _load_local(local, uri).items()}  # clone: off the temp file's mmap


def _check_shapes(
    expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], name: Callable[[str], str | None], what: str
) -> None:
    """CheckpointError naming the first missing, unexpected or mis-shaped key (`name` renders a key)."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    if missing or unexpected:
        key = (missing or unexpected)[0]
        raise CheckpointError(f"{what}: {name(key)} {'missing' if missing else 'unexpected'}")
    for key, ref in expected.items():
        if tuple(got[key].shape) != tuple(ref.shape):
            raise CheckpointError(f"{what}: {name(key)} has shape {tuple(got[key].shape)}, expected {tuple(ref.shape)}")


def _trunk_reference(cfg: AIMConfig) -> dict[str, torch.Tensor]:
    """Our trunk's state dict on the meta device (shapes only, nothing materialised)."""
    with torch.device("meta"):
        model = AIM(cfg)
    return {k: v for k, v in model.state_dict().items() if ml_aim.is_trunk_key(k)}


def _probe_reference(cfg: AIMConfig, probe: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from aim_core.probes import AttentiveProbe

    classes = int(probe["linear.weight"].shape[0]) if "linear.weight" in probe else 1
    with torch.device("meta"):
        return AttentiveProbe(cfg.width, classes, cfg.num_heads, linear_bias="linear.bias" in probe).state_dict()


def _convert(state: dict[str, torch.Tensor], preset: str | None, src: str):
    """(preset, config, our trunk state, our probe state or None) from Apple's keys, every shape checked."""
    try:
        trunk = ml_aim.trunk_from_ml_aim(state)
        shape = ml_aim.weight_shape(trunk)
        preset = preset or ml_aim.infer_preset(shape)
        ml_aim.check_preset(shape, preset)
        probe = ml_aim.probe_from_ml_aim(state)
    except ValueError as e:
        raise CheckpointError(f"{src}: {e}") from None
    cfg = resolve_config(preset)
    _check_shapes(_trunk_reference(cfg), trunk, ml_aim.to_ml_aim_key, src)
    if probe is not None:
        _check_shapes(_probe_reference(cfg, probe), probe, ml_aim.probe_key_to_ml_aim, src)
    return preset, cfg, trunk, probe


def _write_checkpoint(out: str, payload: dict, meta: dict, s3: S3Config | None) -> str:
    """`state.pt` then `meta.json` (last: a directory without it is no checkpoint) into `out`, local or s3://.
    Locally the state is written in place (temp name, renamed): a 7B trunk is never copied twice."""
    import pyarrow.fs as pafs

    from pipelines.storage import display, resolve, storage_error, write_bytes

    fs, path = resolve(out, s3)
    if fs is None:
        try:
            Path(path).mkdir(parents=True, exist_ok=True)
            torch.save(payload, Path(path, STATE_FILE + ".tmp"))
            os.replace(Path(path, STATE_FILE + ".tmp"), Path(path, STATE_FILE))
            Path(path, META_FILE).write_text(json.dumps(meta))
        except OSError as e:
            raise CheckpointError(f"writing {path}: {e.strerror or e}") from None
        return path
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(payload, Path(tmp, STATE_FILE))
        try:
            pafs.copy_files(
                str(Path(tmp, STATE_FILE)),
                f"{path}/{STATE_FILE}",
                source_filesystem=pafs.LocalFileSystem(),
                destination_filesystem=fs,
            )
        except OSError as e:
            raise storage_error(e, fs, f"{path}/{STATE_FILE}", "writing") from None
    write_bytes(fs, f"{path}/{META_FILE}", json.dumps(meta).encode())
    return display(fs, path)


def _payload(cfg: AIMConfig, preset: str, trunk: dict, probe: dict | None, src: str) -> dict:
    """state.pt of an imported checkpoint: the trunk in our names, its config, the probe head if any."""
    payload = {
        "model": {k: v.contiguous() for k, v in trunk.items()},
        TRUNK_ONLY: True,
        "step": 0,
        "epoch": 0,
        "batches_in_epoch": 0,
        "model_config": ml_aim.config_fields(cfg),
        "preset": preset,
        "imported_from": {"format": "ml-aim", "uri": src},
    }
    if probe is not None:  # kept as it came (trained on Apple's blocks); `aimctl probe` trains its own
        payload["attentive_probe"] = {k: v.contiguous() for k, v in probe.items()}
    return payload


def import_ml_aim(
    src: str, out: str, preset: str | None = None, head: str | None = None, s3: S3Config | None = None
) -> ImportResult:
    """Apple's backbone `src` (+ its attentive-probe `head` file, if given) -> checkpoint directory `out`."""
    state = read_weights(src, s3)
    if head is not None:
        extra = read_weights(head, s3)
        overlap = sorted(set(state) & set(extra))
        if overlap:
            raise CheckpointError(f"{head}: key {overlap[0]} is also in {src}")
        state = {**state, **extra}
    preset, cfg, trunk, probe = _convert(state, preset, src)
    meta = {"step": 0, "epoch": 0, "batches_in_epoch": 0, "preset": preset, "imported_from": src}
    where = _write_checkpoint(out, _payload(cfg, preset, trunk, probe, src), meta, s3)
    classes = None if probe is None else int(probe["linear.weight"].shape[0])
    return ImportResult(where, preset, len(trunk), classes)


def _save(tensors: dict[str, torch.Tensor], out: str, s3: S3Config | None) -> str:
    """Write a state dict to file `out` (local or s3://): safetensors for `.safetensors`, else torch.save."""
    import pyarrow.fs as pafs

    from pipelines.storage import display, is_s3, resolve, storage_error

    def write(path: Path) -> None:
        if out.endswith(".safetensors"):
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
        else:
            torch.save(tensors, path)

    fs, path = resolve(out, s3)
    if not is_s3(out):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write(Path(path))
        return path
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp, Path(path).name)
        write(local)
        try:
            pafs.copy_files(str(local), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
        except OSError as e:
            raise storage_error(e, fs, path, "writing") from None
    return display(fs, path)


def _read_checkpoint(ckpt: str, s3: S3Config | None) -> dict:
    from pipelines.storage import resolve
    from pipelines.train.checkpoint import read_state

    fs, path = resolve(ckpt, s3)
    try:
        return read_state(fs, path)
    except FileNotFoundError:
        raise CheckpointError(f"{ckpt}: not a checkpoint directory (no state.pt)") from None


def export_ml_aim(ckpt: str, out: str, head_out: str | None = None, s3: S3Config | None = None) -> ExportResult:
    """A checkpoint's trunk -> Apple's backbone layout in file `out`; `head_out` also writes the attentive
    probe an imported checkpoint kept, as Apple's head file."""
    state = _read_checkpoint(ckpt, s3)
    mapped, left = ml_aim.trunk_to_ml_aim(state.get("model") or {})
    try:
        ml_aim.weight_shape(ml_aim.trunk_from_ml_aim(mapped))
    except ValueError as e:
        raise CheckpointError(f"{ckpt}: {e}") from None
    probe_out = None
    if head_out is not None:
        if "attentive_probe" not in state:
            raise CheckpointError(f"{ckpt}: holds no attentive probe (only checkpoints imported with --head do)")
        probe_out = _save(ml_aim.probe_to_ml_aim(state["attentive_probe"]), head_out, s3)
    where = _save(mapped, out, s3)
    return ExportResult(where, len(mapped), left, probe_out)


def _config_differences(saved: dict, cfg: AIMConfig) -> list[str]:
    return [
        f"{f} {getattr(cfg, f)} (checkpoint: {saved[f]})"
        for f in _SHAPE_FIELDS
        if f in saved and getattr(cfg, f) != saved[f]
    ]


def load_weights(model: AIM, state: dict, where: str) -> None:
    """Put a checkpoint's weights into `model`. Imported checkpoints (`trunk_only`) fill the trunk only and
    must match the model's shape fields; CheckpointError, one line, when the two do not fit."""
    saved = state.get("model_config")
    if saved is not None:
        diff = _config_differences(saved, model.config)
        if diff:
            raise CheckpointError(
                f"checkpoint {where} holds {state.get('preset', 'another model')}; the experiment's "
                f"model differs: {'; '.join(diff)} (set model.preset: {state.get('preset')} and "
                "drop the shape overrides)"
            )
    weights, trunk_only = state["model"], bool(state.get(TRUNK_ONLY))
    expected = {k: v for k, v in model.state_dict().items() if not trunk_only or ml_aim.is_trunk_key(k)}
    what = f"checkpoint {where} does not fit the experiment's model"
    if trunk_only:
        _check_shapes(expected, weights, str, what)
    try:
        model.load_state_dict(weights, strict=not trunk_only)
    except RuntimeError:  # torch's message lists every key on many lines: name the first instead
        _check_shapes(expected, weights, str, what)
        raise
