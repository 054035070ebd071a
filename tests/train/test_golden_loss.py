"""Golden loss curve (as torchtitan's `tests/assets/losses/`): a fixed tiny pre-training on CPU, fixed seeds,
through the real pipeline (`pretrain` in-process: demo data, Ray Data stream, loop, MLflow), whose first
losses must match `tests/assets/golden_loss.json` to the tolerance stored there.

A change that moves the numbers (model, init, target, data selection, shuffle, crops, optimizer, schedule)
fails here with the first step that differs. If the change is intended, regenerate and commit the JSON:

    AIM_UPDATE_GOLDEN=1 python -m pytest tests/train/test_golden_loss.py

(the switch is read by this test only; production code reads no test switches)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pipelines import tracking
from pipelines.config import parse_experiment
from tests.conftest import experiment

pytestmark = [pytest.mark.ray]

GOLDEN = Path(__file__).resolve().parents[1] / "assets" / "golden_loss.json"
UPDATE_ENV = "AIM_UPDATE_GOLDEN"
STEPS = 16
TOLERANCE = 1e-5  # absolute; measured: repeated runs (same and fresh process) are bit-identical on CPU
MEASURED = (
    "2026-12-01, torch 2.14.1, 2 CPU cores: 3 runs in one process and 2 in fresh processes gave "
    "bit-identical losses (max |diff| 0.0); 1e-5 leaves room for other CPUs/BLAS builds"
)
OVERRIDES = {
    "schedule": {"steps": STEPS},
    "scaling": {"num_workers": 0, "threads_per_worker": 1},
    "storage": {"checkpoint_every": STEPS},
    "tracking": {"log_every": 1},
}
LOCAL_KEYS = ("uri", "path")  # tmp paths: left out of the recorded config


def _portable(value: object) -> object:
    """The experiment dict without the keys that hold this run's temporary paths and URIs."""
    if isinstance(value, dict):
        return {k: _portable(v) for k, v in value.items() if k not in LOCAL_KEYS}
    return value


def golden_losses(demo, tmp: Path, name: str = "golden") -> tuple[dict, list[float]]:
    """Run the golden pre-training; (portable experiment dict, train/loss of steps 1..STEPS from MLflow)."""
    import torch

    from pipelines.train.driver import pretrain

    exp = experiment(demo, tmp, name, **OVERRIDES)
    cfg = parse_experiment(exp)
    threads = torch.get_num_threads()  # the in-process run sets this process's threads
    try:
        pretrain(cfg, show_progress=False)
    finally:
        torch.set_num_threads(threads)
    c = tracking.client(cfg.tracking.uri)
    runs = c.search_runs(
        [c.get_experiment_by_name(cfg.tracking.experiment).experiment_id],
        filter_string=f"attributes.run_name = '{name}'",
    )
    hist = sorted((m.step, m.value) for m in c.get_metric_history(runs[0].info.run_id, "train/loss"))
    assert [s for s, _ in hist] == list(range(1, STEPS + 1)), f"logged steps: {[s for s, _ in hist]}"
    return _portable(exp), [v for _, v in hist]


def first_difference(expected: list[float], actual: list[float], tol: float) -> str | None:
    """A line naming the first step (1-based) whose loss differs by more than `tol`, or None if none does."""
    if len(actual) != len(expected):
        return f"{len(actual)} losses logged, the golden curve has {len(expected)}"
    for step, (e, a) in enumerate(zip(expected, actual), start=1):
        if not abs(e - a) <= tol:
            return f"step {step}: expected loss {e!r}, got {a!r} (|diff| {abs(e - a):.3g} > tol {tol:g})"
    return None


def _write_golden(config: dict, losses: list[float]) -> None:
    import torch

    GOLDEN.write_text(
        json.dumps(
            {
                "about": "golden train/loss curve of tests/train/test_golden_loss.py (CPU, fixed seeds, in-process)",
                "regenerate": f"{UPDATE_ENV}=1 python -m pytest tests/train/test_golden_loss.py, then commit this file",
                "config": config,
                "config_base": "tests/conftest.py experiment() + OVERRIDES of the test",
                "tolerance_abs": TOLERANCE,
                "reproducibility": MEASURED,
                "torch": torch.__version__,
                "losses": losses,
            },
            indent=2,
        )
        + "\n"
    )


def test_first_difference_names_the_step():
    assert first_difference([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], 1e-5) is None
    msg = first_difference([1.0, 2.0, 3.0], [1.0, 2.5, 3.5], 1e-5)
    assert msg is not None and msg.startswith("step 2: expected loss 2.0, got 2.5"), msg
    assert first_difference([1.0, 2.0], [1.0, float("nan")], 1e-5).startswith("step 2:")


def test_golden_loss_curve(ray_local, demo_data, tmp_path):
    config, losses = golden_losses(demo_data, tmp_path)
    if os.environ.get(UPDATE_ENV):
        _write_golden(config, losses)
        pytest.skip(f"{UPDATE_ENV} set: wrote {GOLDEN}")
    assert GOLDEN.is_file(), f"no golden curve at {GOLDEN}; create it with {UPDATE_ENV}=1"
    golden = json.loads(GOLDEN.read_text())
    assert config == golden["config"], (
        "the golden run's config changed (tests/conftest.py experiment() or "
        f"OVERRIDES); if intended, regenerate with {UPDATE_ENV}=1"
    )
    assert golden["tolerance_abs"] == TOLERANCE
    diff = first_difference(golden["losses"], losses, TOLERANCE)
    assert diff is None, f"loss curve differs from {GOLDEN.name} at {diff}; if intended, regenerate with {UPDATE_ENV}=1"
