"""The one YAML loader, `--set` parser and error formatter behind every config file: experiments
(`pipelines/config.py`), sweeps (`pipelines/sweep/spec.py`), the `data:` section alone
(`pipelines/data/config.py`) and `aimctl model info --set`.

Every problem is one `ConfigError` line that names the file and the field: `exp.yaml: optim.lr: ...`.
Imports only yaml and pydantic (no torch, no Ray): the data section's module imports it too.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

__all__ = ["ConfigError", "apply_overrides", "format_error", "parse_value", "read_mapping", "validate"]


class ConfigError(ValueError):
    """A config problem, phrased as one line naming the file and field."""


# YAML 1.1 (PyYAML) reads 1e-5 (no dot) as a string; `--set norm_eps=1e-5` means the number.
_FLOAT_WITHOUT_DOT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def parse_value(raw: str) -> Any:
    """A `--set` value, typed as YAML types it ('' stays '')."""
    if raw == "":
        return ""
    value = yaml.safe_load(raw)
    if isinstance(value, str) and _FLOAT_WITHOUT_DOT.fullmatch(value):
        return float(value)
    return value


def read_mapping(path: str | Path, kind: str = "experiment", error: type[ConfigError] = ConfigError) -> dict:
    """A YAML file whose top level is a mapping; `error` (one line) if it is missing, not YAML or not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such {kind} file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise error(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise error(f"{path}: the top level must be a mapping of sections")
    return data


def apply_overrides(
    data: dict, overrides: list[str], source: str | None = None, error: type[ConfigError] = ConfigError
) -> dict:
    """Apply `a.b.c=value` strings (YAML-typed values, see `parse_value`) onto a nested dict, in place."""
    where = f"{source}: " if source else ""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise error(f"{where}--set {item!r}: expected KEY=VALUE, e.g. optim.lr=5e-4")
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise error(f"{where}--set {item!r}: {p} is not a section")
        node[parts[-1]] = parse_value(raw)
    return data


_FIELD = re.compile(r"[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*")


def format_error(source: str, err: ValidationError, prefix: str = "") -> str:
    """`source: field.path: message (+N more)` for the first error. A validator that names its field first
    ("top_fraction: ...", or from the top level "model.num_heads: ...") has that field put in the path.
    `prefix` is the section the model was validated as (e.g. "data" for the data section alone)."""
    errors = err.errors()
    first = errors[0]
    loc = ".".join(str(p) for p in first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key (check the spelling)"
    elif first["type"] == "value_error":
        field, sep, rest = msg.partition(": ")
        if sep and _FIELD.fullmatch(field):
            loc, msg = (field if not loc or "." in field else f"{loc}.{field}"), rest
    loc = ".".join(p for p in (prefix, loc) if p) or "(top level)"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{source}: {loc}: {msg}{more}"


def validate(model: type[BaseModel], data: object, source: str, prefix: str = "", error=ConfigError):
    """`model.model_validate(data)`, or `error` with `format_error`'s one line."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise error(format_error(source, e, prefix)) from None
