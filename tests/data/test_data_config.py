"""DataConfig: defaults, minimal YAML, impossible values, the `data build` config errors (exit 2)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from pipelines.data.config import DataConfig, DataConfigError, load_data_section, parse_data_section

MINIMAL = {"pool": {"uri": "s3://b/pool"}, "curated": {"uri": "s3://b/imagenet"}}


def test_minimal_section_has_paper_defaults():
    cfg = DataConfig.model_validate(MINIMAL)
    assert cfg.pool.top_fraction == 0.15 and cfg.pool.threshold is None and not cfg.pool.dedup
    assert cfg.mix.pool_probability == 0.8
    assert cfg.augment.crop_scale == (0.4, 1.0) and cfg.augment.interpolation == "bicubic"
    assert cfg.augment.color_jitter == 0 and cfg.augment.hflip == 0.5
    assert cfg.augment.mean == (0.485, 0.456, 0.406) and cfg.curated.format == "parquet"
    assert cfg.s3.endpoint_url is None and 0 < cfg.max_bad_fraction < 1


@pytest.mark.parametrize(
    "patch, field",
    [
        ({"pool": {"uri": "x", "top_fraction": 0}}, "data.pool.top_fraction"),
        ({"pool": {"uri": "x", "top_fraction": 1.01}}, "data.pool.top_fraction"),
        ({"mix": {"pool_probability": 0}}, "data.mix.pool_probability"),
        ({"mix": {"pool_probability": 1.2}}, "data.mix.pool_probability"),
        ({"augment": {"crop_scale": [0.9, 0.3]}}, "data.augment.crop_scale"),
        ({"augment": {"crop_scale": [0, 1]}}, "data.augment.crop_scale"),
        ({"augment": {"std": [0.2, 0, 0.2]}}, "data.augment.std"),
        ({"augment": {"hflip": 2}}, "data.augment.hflip"),
        ({"max_bad_fraction": 1}, "data.max_bad_fraction"),
        ({"decode": {"concurrency": 0}}, "data.decode.concurrency"),
        ({"curated": {"uri": "x", "format": "tfrecord"}}, "data.curated.format"),
        ({"s3": {"endpoint_url": "127.0.0.1:9000"}}, "data.s3.endpoint_url"),
        ({"s3": {"access_key": "AKIA..."}}, "data.s3.access_key"),
        ({"pool": {"uri": "x", "threshold": 0.3, "top_fraction": 0.2}}, "data.pool.top_fraction"),
        ({"pool": {"uri": "x", "scor_column": "s"}}, "data.pool.scor_column"),
    ],
)
def test_impossible_values_name_the_field(patch, field):
    raw = {**MINIMAL, **patch}
    with pytest.raises(DataConfigError) as e:
        parse_data_section(raw, "exp.yaml")
    message = str(e.value)
    assert message.startswith(f"exp.yaml: {field}:") and "\n" not in message


def test_threshold_alone_is_fine():
    cfg = DataConfig.model_validate({**MINIMAL, "pool": {"uri": "x", "threshold": 0.3}})
    assert cfg.pool.threshold == 0.3


def test_loader_reads_only_data_and_seed(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(
        "name: x\nseed: 7\nmodel: {preset: not-checked-here}\noptim: {lr: -1}\n"
        "data:\n  pool: {uri: /p}\n  curated: {uri: /c}\n"
    )
    cfg, seed = load_data_section(path, ["data.mix.pool_probability=0.7"])
    assert seed == 7 and cfg.mix.pool_probability == 0.7 and cfg.pool.uri == "/p"


def test_experiment_config_embeds_data_config():
    from pipelines.config import ExperimentConfig  # fails (never skips) if it does not import

    exp = ExperimentConfig.model_validate({"name": "x", "data": MINIMAL})
    assert isinstance(exp.data, DataConfig)


def test_build_config_error_is_one_line_exit_2(tmp_path):
    from pipelines.cli import app

    path = tmp_path / "exp.yaml"
    path.write_text("data:\n  pool: {uri: /p, top_fraction: 3}\n  curated: {uri: /c}\n")
    result = CliRunner().invoke(app, ["data", "build", str(path)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "data.pool.top_fraction" in lines[0]
    result = CliRunner().invoke(app, ["data", "build", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2 and "no such experiment file" in result.output
