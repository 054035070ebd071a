"""The one YAML loader / `--set` parser / error formatter shared by experiments, sweeps and the data section."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict, model_validator

from pipelines.config_io import ConfigError, apply_overrides, parse_value, read_mapping, validate


def test_set_values_are_typed_as_yaml_and_floats_without_a_dot_are_numbers():
    assert parse_value("5e-4") == 5e-4 and parse_value("1e-5") == 1e-5 and parse_value("3") == 3
    assert parse_value("") == "" and parse_value("[1, 2]") == [1, 2] and parse_value("abc") == "abc"
    assert apply_overrides({"a": {"b": 1}}, ["a.c=2", "d=x"]) == {"a": {"b": 1, "c": 2}, "d": "x"}


@pytest.mark.parametrize(
    "item, message",
    [
        ("nokey", "f.yaml: --set 'nokey': expected KEY=VALUE"),
        ("a.b.c=1", "f.yaml: --set 'a.b.c=1': b is not a section"),
    ],
)
def test_set_errors_name_the_item(item, message):
    with pytest.raises(ConfigError) as e:
        apply_overrides({"a": {"b": 1}}, [item], "f.yaml")
    assert str(e.value).startswith(message)


def test_read_mapping_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such sweep file"):
        read_mapping(tmp_path / "nope.yaml", "sweep")
    (tmp_path / "l.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        read_mapping(tmp_path / "l.yaml")


class _Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lo: int = 0
    hi: int = 1

    @model_validator(mode="after")
    def _order(self):
        if self.lo > self.hi:
            raise ValueError("hi: must be >= lo")
        return self


class _Outer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inner: _Inner = _Inner()


def test_format_error_names_the_field_a_validator_names():
    with pytest.raises(ConfigError, match=r"^s\.yaml: data\.inner\.hi: must be >= lo$"):
        validate(_Outer, {"inner": {"lo": 3}}, "s.yaml", prefix="data")
    with pytest.raises(ConfigError, match=r"^s\.yaml: inner\.oops: unknown key \(check the spelling\)$"):
        validate(_Outer, {"inner": {"oops": 1}}, "s.yaml")
