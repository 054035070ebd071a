"""A quiet console: without -v, Ray's INFO logging goes to a log file (AIMCTL_LOG_DIR), not the terminal;
a user error prints one line (no traceback) and exits non-zero, from the CLI's single error boundary."""

from __future__ import annotations

import pytest
import typer
import yaml
from reliability_helpers import aimctl, clean_env
from typer.testing import CliRunner

from pipelines.data.errors import DataError

pytestmark = pytest.mark.reliability


@pytest.fixture(scope="module")
def experiment_file(tmp_path_factory):
    from pipelines.data.demo import write_demo

    root = tmp_path_factory.mktemp("quiet")
    write_demo(str(root / "d"), shards=2, per_shard=40, curated_train=20, curated_test=10, size=24)
    pool = {"uri": str(root / "d" / "pool"), "top_fraction": 1.0}
    data = {"pool": pool, "curated": {"uri": str(root / "d" / "curated")}, "max_bad_fraction": 0.3}
    (root / "exp.yaml").write_text(yaml.safe_dump({"seed": 0, "data": data}))
    return root / "exp.yaml"


def _run(args: list[str], cwd, logs) -> tuple[int, str]:
    proc = aimctl(*args, cwd=cwd, env=clean_env(AIMCTL_LOG_DIR=str(logs)))
    out, err = proc.communicate(timeout=240)
    return proc.returncode, err.decode()


@pytest.mark.ray
def test_ray_info_goes_to_the_log_file_unless_verbose(experiment_file, tmp_path):
    code, err = _run(["data", "build", str(experiment_file)], tmp_path, tmp_path / "logs")
    assert code == 0, err
    assert "INFO" not in err and "Starting execution" not in err, err
    (log,) = (tmp_path / "logs").glob("aimctl-*.log")
    assert "Started a local Ray instance" in log.read_text() and "Starting execution" in log.read_text()
    code, err = _run(["-v", "data", "build", str(experiment_file)], tmp_path, tmp_path / "logs-v")
    assert code == 0 and "Starting execution" in err
    assert not (tmp_path / "logs-v").exists()


def _one_error_line(experiment_file, tmp_path, change, needle: str) -> None:
    bad = tmp_path / "bad.yaml"
    doc = yaml.safe_load(experiment_file.read_text())
    change(doc["data"])
    bad.write_text(yaml.safe_dump(doc))
    code, err = _run(["data", "build", str(bad)], tmp_path, tmp_path / "logs")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err


def test_a_data_error_is_one_line_and_exit_1(experiment_file, tmp_path):
    def no_pool(d):
        d["pool"]["uri"] = str(tmp_path / "no-such-pool")

    _one_error_line(experiment_file, tmp_path, no_pool, "no-such-pool")


@pytest.mark.ray
def test_a_failed_ray_data_task_is_one_line_too(experiment_file, tmp_path):
    """The demo's corrupt images past max_bad_fraction=0 fail a Ray Data read task: Ray logs its traceback
    (to the file), aimctl prints the one line."""

    def strict(d):
        d["max_bad_fraction"] = 0.0

    _one_error_line(experiment_file, tmp_path, strict, "samples are unusable")


def test_the_boundary_catches_user_errors_a_command_left_uncaught_and_keeps_bugs_loud():
    from pipelines.cli import _OneLineErrors

    app = typer.Typer(cls=_OneLineErrors)

    @app.command()
    def data_fails() -> None:
        raise RuntimeError("wrapped") from DataError("pool shard '00001': 3 of 4 samples are unusable")

    @app.command()
    def bug() -> None:
        raise KeyError("a bug")

    r = CliRunner().invoke(app, ["data-fails"])
    assert r.exit_code == 1
    assert r.stderr.strip() == "error: pool shard '00001': 3 of 4 samples are unusable"
    r = CliRunner().invoke(app, ["bug"])
    assert isinstance(r.exception, KeyError)


def test_in_quiet_mode_a_bug_is_one_line_and_its_traceback_is_in_the_log(tmp_path):
    from pipelines import quiet
    from pipelines.cli import _OneLineErrors

    app = typer.Typer(cls=_OneLineErrors)

    @app.command()
    def bug() -> None:
        raise KeyError("a bug")

    @app.command()
    def other() -> None:
        pass

    log = tmp_path / "aimctl.log"
    quiet.enable(log)
    try:
        r = CliRunner().invoke(app, ["bug"])
    finally:
        quiet.disable()
    assert r.exit_code == 1 and not isinstance(r.exception, KeyError)
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("error: unexpected KeyError: 'a bug'") and str(log) in line, line
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "KeyError: 'a bug'" in text
