"""A quiet console for `aimctl`: Ray's INFO logging goes to a log file, not the terminal, unless `-v`.

`aimctl` calls `enable(log_path)` once per command unless `-v/--verbose`; every place that starts or
joins Ray calls `route_ray_logs()` right after importing it (`raytools.ensure_ray`, `driver.init_ray`).
Then the `ray` and `ray.data` loggers of this process write INFO and above to the log file and only
Ray's warnings to the terminal (a failed Ray Data task's traceback goes to the file; aimctl prints the
error's one line), and workers' output stays in Ray's session logs
(`log_to_driver=False`). Library use (tests, notebooks) is untouched: nothing happens until `enable`.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

__all__ = ["enable", "disable", "is_quiet", "log_path", "route_ray_logs", "default_log_path"]

_STATE: dict[str, Path | None] = {"path": None}
_CHANGED: dict[str, list] = {}  # console handlers whose level route_ray_logs raised, with the old level
# the two that do not propagate (ray.train / ray.tune log in the workers' processes) -> the lowest level that
# still reaches the console: a failed Ray Data task logs its traceback at ERROR, and aimctl prints the error's
# one line itself (the traceback stays in the file)
_LOGGERS = {"ray": logging.WARNING, "ray.data": logging.CRITICAL}


def default_log_path() -> Path:
    """`$AIMCTL_LOG_DIR` (default: the temp dir's `aimctl/`) / aimctl-DATE-TIME-PID.log; never the cwd."""
    root = Path(os.environ.get("AIMCTL_LOG_DIR") or Path(tempfile.gettempdir()) / "aimctl")
    return root / f"aimctl-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"


def enable(path: Path | None = None) -> Path:
    _STATE["path"] = path or default_log_path()
    return _STATE["path"]


def disable() -> None:
    """Back to Ray's own console logging (undoes `route_ray_logs`: aimctl calls it when a command ends)."""
    _STATE["path"] = None
    for handler, level in _CHANGED.pop("levels", []):
        handler.setLevel(level)
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        for h in [h for h in logger.handlers if isinstance(h, _ToFile)]:
            logger.removeHandler(h)
            h.close()


def is_quiet() -> bool:
    return _STATE["path"] is not None


def log_path() -> Path | None:
    return _STATE["path"]


class _ToFile(logging.FileHandler):
    """Our file handler (marked, so routing twice adds it once)."""


def route_ray_logs() -> None:
    """In quiet mode: Ray's loggers of this process log INFO+ to the file and only WARNING+ to the console."""
    path = _STATE["path"]
    if path is None:
        return
    import ray.data  # noqa: F401 - configures the `ray.data` logger (its console handler) on import

    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("%(asctime)s\t%(levelname)s %(name)s %(filename)s:%(lineno)s -- %(message)s")
    for name, console in _LOGGERS.items():
        logger = logging.getLogger(name)
        for h in logger.handlers:
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) and h.level < console:
                _CHANGED.setdefault("levels", []).append((h, h.level))
                h.setLevel(console)
        if not any(isinstance(h, _ToFile) for h in logger.handlers):
            handler = _ToFile(path, delay=True, encoding="utf-8")
            handler.setLevel(logging.INFO)
            handler.setFormatter(fmt)
            logger.addHandler(handler)
