"""pipelines/submit.py without a cluster: what a job would carry, credential refusal, ids, redaction."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import submit as sub

ROOT = Path(__file__).resolve().parents[2]
SECRET = "fake-secret-value-never-sent-7731"
ENV = {
    "MLFLOW_TRACKING_URI": "http://mlflow.internal:5000",
    "AWS_ENDPOINT_URL": "http://minio:9000",
    "AWS_REGION": "eu-west-1",
    "AWS_DEFAULT_REGION": "eu-west-1",
    "AWS_ACCESS_KEY_ID": "AKIAFAKEFAKEFAKE0001",
    "AWS_SECRET_ACCESS_KEY": SECRET,
    "AWS_SESSION_TOKEN": SECRET + "-session",
    "HOME": "/root",
    "MY_SETTING": "x",
}


def _req(command, **kw):
    return sub.build_request(command, env=dict(ENV), **kw)


def test_request_carries_settings_not_credentials():
    r = _req(["aimctl", "pretrain", "experiments/cifar10-tiny.yaml", "--set", "schedule.steps=4"])
    assert r.command[0] == "pretrain"
    assert r.entrypoint == "python -m pipelines.cli pretrain experiments/cifar10-tiny.yaml --set schedule.steps=4"
    env_vars = r.runtime_env["env_vars"]
    assert env_vars == {
        k: ENV[k] for k in ("MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION")
    }
    assert r.runtime_env["working_dir"] == str(ROOT)
    for ex in (".venv/", ".git/", "runs/", "mlflow.db", "mlartifacts/"):
        assert ex in r.runtime_env["excludes"]
    blob = json.dumps([r.entrypoint, r.runtime_env, r.metadata])
    assert SECRET not in blob and "AKIAFAKE" not in blob
    assert r.entrypoint_resources == {sub.DRIVER_RESOURCE: 1.0}
    assert not r.warnings


@pytest.mark.parametrize(
    "command,extra_env,match",
    [
        (["pretrain", "x.yaml"], ["AWS_SECRET_ACCESS_KEY"], "credentials never travel"),
        (["pretrain", "x.yaml"], ["MY_API_TOKEN=abc"], "credentials never travel"),
        (["pretrain", "x.yaml"], ["DB=postgresql://u:pw@h/db"], "password"),
        (["pretrain", "x.yaml", "--set", "data.s3.secret_key=abc"], [], "credentials never go"),
        (["pretrain", "x.yaml", "--set", f"data.s3.endpoint={SECRET}"], [], "value of a credential"),
        (["pretrain", "x.yaml", "--set", "tracking.uri=http://u:pw@mlflow:5000"], [], "password"),
        (["submit", "--", "pretrain"], [], "runs on your machine"),
        ([], [], "no command"),
        (["pretrain", "x.yaml"], ["NOT_SET_ANYWHERE"], "not set"),
    ],
)
def test_refusals(command, extra_env, match):
    with pytest.raises(sub.SubmitError, match=match):
        _req(command, extra_env=extra_env)


def test_extra_env_and_warning_without_server():
    env = {k: v for k, v in ENV.items() if k != "MLFLOW_TRACKING_URI"}
    r = sub.build_request(["sweep", "s.yaml"], env=env, extra_env=["MY_SETTING", "OTHER=1"], driver_resource=None)
    assert r.runtime_env["env_vars"]["MY_SETTING"] == "x" and r.runtime_env["env_vars"]["OTHER"] == "1"
    assert r.entrypoint_resources == {}
    assert any("MLFLOW_TRACKING_URI" in w for w in r.warnings)


def test_submission_ids_are_deterministic_and_unique():
    a = sub.submission_base(["pretrain", "experiments/cifar10-tiny.yaml"], "abc", "clean")
    assert a == sub.submission_base(["pretrain", "experiments/cifar10-tiny.yaml"], "abc", "clean")
    assert a.startswith("aim-pretrain-cifar10-tiny-") and len(a.rsplit("-", 1)[1]) == 8
    assert a != sub.submission_base(["pretrain", "experiments/cifar10-tiny.yaml"], "abd", "clean")
    assert a != sub.submission_base(["pretrain", "experiments/cifar10-tiny.yaml"], "abc", "dirty-1234")
    assert a != sub.submission_base(["pretrain", "experiments/cifar10-tiny.yaml", "--set", "x=1"], "abc", "clean")
    assert sub.next_submission_id(a, set()) == f"{a}-1"
    assert sub.next_submission_id(a, {f"{a}-1", f"{a}-2"}) == f"{a}-3"
    assert sub.submission_base(["model", "info", "aim-test"], "c", "clean").startswith("aim-model-info-")


def test_git_state_of_this_checkout():
    commit, state = sub.git_state(ROOT)
    assert commit == "nogit" or len(commit) == 40
    assert state == "clean" or state.startswith("dirty-")


def test_redact():
    env = {"AWS_SECRET_ACCESS_KEY": SECRET, "PATH": "/usr/bin"}
    text = f"key={SECRET} uri=postgresql://mlflow:pw123@db/x path=/usr/bin"
    out = sub.redact(text, env)
    assert SECRET not in out and "pw123" not in out and "/usr/bin" in out and "postgresql://mlflow:***@db" in out


def test_cli_dry_run_prints_no_secret():
    env = {**{k: v for k, v in __import__("os").environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}, **ENV}
    out = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "submit", "--dry-run", "--", "model", "info", "aim-test", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert SECRET not in out.stdout + out.stderr
    job = json.loads(out.stdout)
    assert job["entrypoint"].endswith("-m pipelines.cli model info aim-test --json")
    assert job["submission_id_prefix"].startswith("aim-model-info-")
    refused = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.cli",
            "submit",
            "--dry-run",
            "--env",
            "AWS_SECRET_ACCESS_KEY",
            "--",
            "model",
            "list",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2 and SECRET not in refused.stdout + refused.stderr


def test_yaml_paths_are_made_relative_to_the_uploaded_project(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT / "experiments")
    r = _req(["pretrain", "cifar10-tiny.yaml"])  # relative to where you stand
    assert r.command == ["pretrain", "experiments/cifar10-tiny.yaml"] and not r.warnings
    r = _req(["pretrain", str(ROOT / "experiments/cifar10-tiny.yaml")])
    assert r.command[1] == "experiments/cifar10-tiny.yaml"
    outside = tmp_path / "x.yaml"
    outside.write_text("name: x\n")
    r = _req(["pretrain", str(outside)])
    assert r.command[1] == str(outside) and any("outside the project" in w for w in r.warnings)
