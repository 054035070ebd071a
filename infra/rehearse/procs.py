"""Processes of the rehearsal: free ports, process sessions started and stopped as a unit, waiting."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session_pids(sid: int) -> list[int]:
    """Every live process of the process session `sid` (except this one)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if os.getsid(int(d.name)) == sid and not _zombie(d):
                    pids.append(int(d.name))
            except (ProcessLookupError, PermissionError):
                pass
    return pids


def _zombie(proc_dir: Path) -> bool:
    """Exited, not yet reaped by its parent (a zombie holds no resources; its parent will reap it)."""
    try:
        return (proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def kill_session(sid: int) -> int:
    """SIGKILL every process of the session at once (how a reclaimed machine looks); returns how many."""
    pids = session_pids(sid)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not session_pids(sid), 10, f"session {sid} to exit")
    return len(pids)


def stop_session(sid: int, grace_s: float = 3.0) -> None:
    """SIGTERM every process of the session we created (by id), then SIGKILL what is left."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 2.0)):
        pids = session_pids(sid)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and session_pids(sid):
            time.sleep(0.2)


def wait_for(cond: Callable[[], object], timeout_s: float, what: str, every_s: float = 0.3):
    """Poll `cond` until it returns something truthy (returned); TimeoutError naming `what` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(every_s)
