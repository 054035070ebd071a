"""Shared CLI plumbing: config loading with one-line errors and exit code 2."""

from __future__ import annotations

import re
from pathlib import Path

import typer
from rich.console import Console

console = Console(stderr=True)

__all__ = ["console", "load_or_exit", "fail", "user_error"]


def fail(message: str, code: int = 2) -> None:
    from rich.markup import escape

    # escaped: a message holding "[...]" (a list value, a hint) would otherwise be eaten as rich markup
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def load_or_exit(path: Path, overrides: list[str] | None):
    from pipelines.config import ConfigError, load_experiment

    try:
        return load_experiment(path, overrides or [])
    except ConfigError as e:
        fail(str(e))


def _one_line(e: BaseException) -> str:
    """Our messages are one line; Ray Data appends retry notes on further lines (kept out)."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    line = lines[0] if lines else type(e).__name__
    return line.split(": ", 1)[1] if line.startswith(type(e).__name__ + ": ") else line


def user_error(exc: BaseException) -> str | None:
    """The one-line message of a failure meant for the user (bad data, storage, non-finite loss, config),
    found through Ray's wrappers: TrainingFailedError -> worker failures -> the worker's exception,
    RayTaskError.cause, and exception chains. None for anything else (a bug: the traceback should show)."""
    from pipelines.config import ConfigError
    from pipelines.data.errors import DataError
    from pipelines.storage import StorageError
    from pipelines.train.loop import TrainingError

    wanted = (TrainingError, DataError, StorageError, ConfigError)
    seen: set[int] = set()
    todo: list = [exc]
    texts: list[str] = []
    while todo:
        e = todo.pop(0)
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        cause = getattr(e, "cause", None)  # RayTaskError(X) is also an X; its .cause is the clean X
        if isinstance(e, wanted) and not isinstance(cause, BaseException):
            return _one_line(e)
        if type(e) is OSError and "AWS Error" in str(e):  # a raw pyarrow S3 error (e.g. mid-stream)
            from pipelines.storage import _scrub

            return _scrub(str(e).strip().splitlines()[0])
        failures = getattr(e, "worker_failures", None) or {}
        todo += [
            cause,
            getattr(e, "_base_exc", None),
            getattr(e, "controller_failure", None),
            *failures.values(),
            e.__cause__,
            e.__context__,
        ]
        texts.append(str(e))
    # Ray Data wraps errors raised in its tasks (UserCodeException) and the chain is lost on the way back:
    # only the remote traceback's text still holds the message, as "...DataError: <message>".
    names = "TrainingError|NonFiniteLoss|DataError|BadSamplesError|StorageError|ConfigError"
    for text in texts:
        m = re.search(rf"^(?:[\w.]+\.)?(?:{names}): (.+)$", text, re.M)
        if m:
            return m.group(1).strip()
    return None
