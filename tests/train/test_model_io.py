"""`aimctl model import/export` (Apple's ml-aim layout) and `aimctl probe --checkpoint` on an imported checkpoint.

No network: the "published" files are written here from a random aim-test model in Apple's layout (the
agreement of that layout with Apple's modules is checked in tests/core/test_core_ml_aim.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import aim_core
from aim_core import ml_aim
from pipelines.cli import app
from pipelines.config import ExperimentConfig


def _save(tensors: dict, path: Path) -> Path:
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    else:
        torch.save(tensors, path)
    return path


def _load(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, weights_only=True)


@pytest.fixture
def published(tmp_path):
    """(model, Apple backbone dict, Apple head dict): a random aim-test trunk and probe in Apple's layout."""
    torch.manual_seed(0)
    model = aim_core.build_model("aim-test").eval()
    probe = aim_core.AttentiveProbe(32, 7, 2)
    backbone, _ = ml_aim.trunk_to_ml_aim(model.state_dict())
    return model, backbone, ml_aim.probe_to_ml_aim(probe.state_dict())


def _cli(*args: str):
    r = CliRunner().invoke(app, list(args))
    return r.exit_code, r.stdout, r.stderr


def _one_line_error(code: int, err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    assert all(n in lines[0] for n in needles), lines[0]


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_import_export_round_trip(tmp_path, published, suffix):
    _, backbone, head = published
    src, head_src = _save(backbone, tmp_path / f"backbone{suffix}"), _save(head, tmp_path / f"head{suffix}")
    code, out, err = _cli("model", "import", str(src), "--out", str(tmp_path / "ckpt"), "--head", str(head_src))
    assert code == 0, err
    assert "as aim-test" in out and "7 classes" in out and "aimctl probe" in out
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["meta.json", "state.pt"]
    assert json.loads((tmp_path / "ckpt" / "meta.json").read_text())["preset"] == "aim-test"
    back, head_back = tmp_path / f"back{suffix}", tmp_path / f"head_back{suffix}"
    code, out, err = _cli(
        "model",
        "export",
        str(tmp_path / "ckpt"),
        "--format",
        "ml-aim",
        "--out",
        str(back),
        "--head-out",
        str(head_back),
    )
    assert code == 0, err
    assert "no place in Apple's layout" in out
    for original, path in ((backbone, back), (head, head_back)):
        loaded = _load(path)
        assert set(loaded) == set(original) and all(torch.equal(loaded[k], original[k]) for k in original)


def test_export_of_a_trained_checkpoint_leaves_the_head_out(tmp_path, published):
    from pipelines.train.checkpoint import TrainState, save_state

    model, backbone, _ = published
    save_state(tmp_path / "ckpt", model.state_dict(), {}, {}, TrainState(step=3))
    code, out, err = _cli("model", "export", str(tmp_path / "ckpt"), "--out", str(tmp_path / "x.pth"))
    assert code == 0, err
    assert "head.*" in out  # what was left out is named
    loaded = torch.load(tmp_path / "x.pth", weights_only=True)
    assert set(loaded) == set(backbone) and all(torch.equal(loaded[k], backbone[k]) for k in backbone)


def test_import_errors_are_one_line(tmp_path, published):
    _, backbone, head = published
    src = _save(backbone, tmp_path / "b.pth")
    out = str(tmp_path / "ckpt")
    _one_line_error(
        *_cli("model", "import", str(src), "--out", out, "--preset", "aim-tiny")[::2],
        "preset aim-tiny does not fit",
        "width 192 (weights: 32)",
    )
    wide = {k: v for k, v in backbone.items() if not k.startswith("trunk.blocks.1.")}
    _one_line_error(
        *_cli("model", "import", str(_save(wide, tmp_path / "d1.pth")), "--out", out)[::2], "no preset", "depth 1"
    )
    _one_line_error(*_cli("model", "import", str(tmp_path / "none.pth"), "--out", out)[::2], "none.pth: no such file")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    _one_line_error(*_cli("model", "import", str(tmp_path / "junk.pth"), "--out", out)[::2], "not a torch state dict")
    bad_head = {**head, "head.k.weight": torch.zeros(16, 32)}
    _one_line_error(
        *_cli("model", "import", str(src), "--out", out, "--head", str(_save(bad_head, tmp_path / "h.pth")))[::2],
        "head.k.weight has shape (16, 32)",
    )
    _one_line_error(*_cli("model", "export", str(tmp_path), "--out", str(tmp_path / "x.pth"))[::2], "no state.pt")
    _one_line_error(*_cli("model", "export", str(tmp_path), "--format", "timm", "--out", "x.pth")[::2], "only ml-aim")
    assert not (tmp_path / "ckpt").exists()


def _experiment(**model) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "name": "imported",
            "model": {"preset": "aim-test", **model},
            "data": {"pool": {"uri": "/unused"}, "curated": {"uri": "/unused"}},
        }
    )


def test_probe_loads_an_imported_checkpoint(tmp_path, published):
    from pipelines.model_io import CheckpointError, import_ml_aim
    from pipelines.probe_runner import load_trunk

    model, backbone, _ = published
    res = import_ml_aim(str(_save(backbone, tmp_path / "b.pth")), str(tmp_path / "ckpt"))
    loaded, _ = load_trunk(_experiment(), res.out)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded.extract_features(x, [0, 1]), model.extract_features(x, [0, 1]))
    with pytest.raises(CheckpointError, match=r"holds aim-test.*width 64 \(checkpoint: 32\).*model.preset: aim-test"):
        load_trunk(_experiment(width=64), res.out)
    with pytest.raises(CheckpointError, match=r"norm_eps 1e-05 \(checkpoint: 1e-06\)"):
        load_trunk(_experiment(norm_eps=1e-5), res.out)


def test_aimctl_probe_on_an_imported_checkpoint(tmp_path, published, demo_data):
    """The user's protocol (`aimctl probe EXPERIMENT --checkpoint`), end to end on the demo's labelled set."""
    import yaml

    from tests.conftest import experiment

    _, backbone, _ = published
    assert _cli("model", "import", str(_save(backbone, tmp_path / "b.pth")), "--out", str(tmp_path / "ckpt"))[0] == 0
    exp = experiment(
        demo_data,
        tmp_path,
        "imported",
        tracking={"enabled": False},
        probe={"epochs": 2, "train_limit": 64, "test_limit": 32},
    )
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(exp))
    code, out, err = _cli("probe", str(tmp_path / "exp.yaml"), "--checkpoint", str(tmp_path / "ckpt"))
    assert code == 0, err
    assert "pretrained trunk" in out + err and "64 train / 32 test" in out + err
    exp["model"]["depth"] = 3
    (tmp_path / "exp3.yaml").write_text(yaml.safe_dump(exp))
    _one_line_error(
        *_cli("probe", str(tmp_path / "exp3.yaml"), "--checkpoint", str(tmp_path / "ckpt"))[::2],
        "depth 3 (checkpoint: 2)",
    )


def test_a_trained_checkpoint_that_does_not_fit_is_named_in_one_line(tmp_path, published):
    from pipelines.model_io import CheckpointError
    from pipelines.probe_runner import load_trunk
    from pipelines.train.checkpoint import TrainState, save_state

    model, _, _ = published
    save_state(tmp_path / "ckpt", model.state_dict(), {}, {}, TrainState(step=3))
    assert load_trunk(_experiment(), str(tmp_path / "ckpt"))[0].config.width == 32  # a fitting one loads as before
    with pytest.raises(
        CheckpointError, match=r"does not fit the experiment's model: .* has shape \(32, .*expected \(64"
    ):
        load_trunk(_experiment(width=64), str(tmp_path / "ckpt"))
