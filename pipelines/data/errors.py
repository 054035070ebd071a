"""Data errors with messages meant for the user (they name the shard or location)."""

from __future__ import annotations

__all__ = ["DataError", "BadSamplesError"]


class DataError(ValueError):
    """The input data is unusable as laid out (missing shard, missing column, empty selection...)."""


class BadSamplesError(DataError):
    """A shard had more corrupt/missing images than `data.max_bad_fraction` allows."""
