"""infra/docker/Dockerfile: the official Ray GPU base for the pinned Ray + Python 3.11, the pins installed."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "infra/docker/Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())  # join continuation lines
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_base_image_matches_pins():
    froms = [rest for op, rest in _instructions() if op == "FROM"]
    assert len(froms) == 1, "one stage: the Ray image itself"
    image, _, tag = froms[0].partition(":")
    assert image == "rayproject/ray"
    ray_pin = next(re.search(r"==([0-9.]+)", d).group(1) for d in _project()["dependencies"] if d.startswith("ray["))
    assert tag == f"{ray_pin}-py311-gpu"
    assert ">=3.11" in _project()["requires-python"] and "<3.12" in _project()["requires-python"]


def test_installs_the_project_with_its_pinned_dependencies():
    ins = _instructions()
    copies = " ".join(rest for op, rest in ins if op == "COPY")
    runs = " ".join(rest for op, rest in ins if op == "RUN")
    assert "pyproject.toml" in copies
    for pkg in ("aim_core", "pipelines", "experiments"):
        assert pkg in copies, pkg
    assert "tomllib" in runs and "['project']['dependencies']" in runs, "deps must come from pyproject.toml"
    assert "pip install -r /tmp/requirements.txt" in runs
    assert "pip install --no-deps -e ." in runs
    assert "ray.__version__ == '2.60.0'" in runs and "(3, 11)" in runs
    # pins in pyproject are exact (==), so the image resolves the same set as the test machines
    assert all("==" in d for d in _project()["dependencies"])
    workdir = [rest for op, rest in ins if op == "WORKDIR"]
    assert workdir == ["/home/ray/aim"], "RayJob templates use /home/ray/aim as working_dir"


def test_build_context_ignores_local_state():
    ignore = (ROOT / "infra/docker/Dockerfile.dockerignore").read_text().split()
    for entry in (".venv", ".git", "runs", "mlflow.db", "mlartifacts"):
        assert entry in ignore, entry
    assert not any(op == "ENV" and re.search(r"SECRET|PASSWORD|TOKEN", rest) for op, rest in _instructions())
