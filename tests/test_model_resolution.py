"""One source for model names and values: aim_core's registries name what the config accepts, and
`aimctl model info` and a pipeline run resolve the same AIMConfig from the same YAML (preset values unless
the YAML sets a field)."""

from __future__ import annotations

import dataclasses
import json
import typing

import pytest
import yaml
from typer.testing import CliRunner

import aim_core
from pipelines.cli import app
from pipelines.config import ModelSection, TargetSection, load_experiment


def _literal(model, field: str) -> tuple:
    (lit,) = [a for a in typing.get_args(model.model_fields[field].annotation) if a is not type(None)]
    return typing.get_args(lit)


def test_config_names_come_from_aim_core_registries():
    assert _literal(TargetSection, "name") == aim_core.TARGETS
    assert _literal(ModelSection, "head") == aim_core.HEADS
    assert _literal(ModelSection, "order") == aim_core.ORDERS
    assert _literal(ModelSection, "attention") == aim_core.PRETRAIN_ATTENTION
    assert set(aim_core.PRETRAIN_ATTENTION) <= set(aim_core.ATTENTION_MODES)
    assert _literal(ModelSection, "attn_impl") == aim_core.ATTN_IMPLS


def test_report_paper_values_are_registered_names():
    from pipelines.sweep.report import PAPER, PAPER_BEST

    registry = {"order": aim_core.ORDERS, "head": aim_core.HEADS}
    for axis, value in PAPER:
        if axis in registry:
            assert value in registry[axis], (axis, value)
    assert PAPER_BEST["target"] in aim_core.TARGETS
    assert PAPER_BEST["attention"] in aim_core.PRETRAIN_ATTENTION


def test_aim_config_validates_when_built():
    with pytest.raises(ValueError, match="^img_size: "):
        aim_core.AIMConfig(img_size=30, patch_size=4)
    with pytest.raises(ValueError, match="^target: unknown target 'vq'; choose one of pixel"):
        dataclasses.replace(aim_core.PRESETS["aim-test"], target="vq")


def _write(tmp_path, **sections) -> str:
    doc = {"name": "res", "model": {"preset": "aim-tiny"}, "data": {"pool": {"uri": "p"}, "curated": {"uri": "c"}}}
    doc.update(sections)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def _info(*args: str) -> dict:
    res = CliRunner().invoke(app, ["model", "info", *args, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.output)["config"]


@pytest.mark.parametrize(
    "target, sets, expect",
    [
        ({"name": "kmeans"}, [], {"target": "kmeans", "num_clusters": 256, "dvae_vocab": 256}),  # the preset's
        ({"name": "dvae", "dvae_vocab": 64}, [], {"target": "dvae", "num_clusters": 256, "dvae_vocab": 64}),
        ({}, ["target.num_clusters=32", "model.depth=3"], {"target": "norm_pixel", "num_clusters": 32, "depth": 3}),
    ],
)
def test_model_info_and_pipeline_resolve_the_same_model(tmp_path, target, sets, expect):
    path = _write(tmp_path, target=target)
    run = dataclasses.asdict(load_experiment(path, sets).aim_config())
    assert {k: run[k] for k in expect} == expect
    assert _info("--experiment", path, *(f"--set={s}" for s in sets)) == run


def test_model_info_preset_matches_an_experiment_with_the_same_words(tmp_path):
    from_preset = _info("aim-tiny", "--set", "target=kmeans")
    assert from_preset == _info("--experiment", _write(tmp_path, target={"name": "kmeans"}))
    assert from_preset["num_clusters"] == aim_core.PRESETS["aim-tiny"].num_clusters


def test_checkpoints_take_their_s3_settings_from_storage(tmp_path):
    """storage.s3 defaults to the data's endpoint (copied at load); given, it is the checkpoints' own."""
    from pipelines.config import parse_experiment

    base = {"name": "s3", "data": {"pool": {"uri": "p"}, "curated": {"uri": "c"}}}
    same = parse_experiment({**base, "data": {**base["data"], "s3": {"endpoint_url": "http://127.0.0.1:9000"}}})
    assert same.storage.s3 == same.data.s3
    own = parse_experiment(
        {
            **base,
            "data": {**base["data"], "s3": {"endpoint_url": "http://127.0.0.1:9000"}},
            "storage": {"s3": {"endpoint_url": "http://127.0.0.1:9100"}},
        }
    )
    assert own.storage.s3.endpoint_url == "http://127.0.0.1:9100" and own.data.s3.endpoint_url.endswith(":9000")
    assert parse_experiment(own.model_dump(mode="json")) == own  # what the workers rebuild
    assert parse_experiment(base).storage.s3.endpoint_url is None
