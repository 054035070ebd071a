"""Shared CLI plumbing: config loading with one-line errors and exit code 2."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

console = Console(stderr=True)

__all__ = ["console", "load_or_exit", "fail"]


def fail(message: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def load_or_exit(path: Path, overrides: list[str] | None):
    from pipelines.config import ConfigError, load_experiment

    try:
        return load_experiment(path, overrides or [])
    except ConfigError as e:
        fail(str(e))


