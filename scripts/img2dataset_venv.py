"""Create (or reuse) a separate virtual environment with img2dataset, and print its executable.

img2dataset pins older packages than the project's, so it never goes into the project's venv. The venv
lives in `.cache/img2dataset-venv` under the repository root (gitignored); a `.installed` stamp written
after a successful install marks it reusable, a venv without it is rebuilt. Used by the img2dataset test
(`tests/data/test_data_img2dataset.py`) and by hand: `python scripts/img2dataset_venv.py`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

PIN = "img2dataset==1.47.0"
ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".cache" / "img2dataset-venv"


def img2dataset_venv(venv: Path = VENV, pin: str = PIN) -> Path:
    """Path of the `img2dataset` executable, installing it first when the venv is not complete (under a
    file lock: two test runs on one checkout build it once)."""
    import fcntl

    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _ensure(venv, pin)


def _ensure(venv: Path, pin: str) -> Path:
    exe = venv / "bin" / "img2dataset"
    stamp = venv / ".installed"
    if stamp.is_file() and stamp.read_text().strip() == pin and exe.is_file():
        return exe
    shutil.rmtree(venv, ignore_errors=True)
    # the interpreter this venv was made from, not the project's venv (a venv of a venv is fine too)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, pin], check=True)
    stamp.write_text(pin + "\n")
    return exe


if __name__ == "__main__":
    print(img2dataset_venv())
