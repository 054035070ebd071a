"""`aimctl submit` / `aimctl jobs` against a real local head (`ray start --head` on 127.0.0.1).

The job is a real aimctl command run through the Jobs API with the project uploaded as working_dir.
Credentials set in the submitting shell must appear nowhere in the job (entrypoint, metadata,
runtime_env) nor in what the CLI prints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infra_helpers import PY, ROOT, aimctl, base_env, ray_head

pytestmark = pytest.mark.ray

SECRETS = {"AWS_ACCESS_KEY_ID": "AKIAFAKEINFRATEST0001", "AWS_SECRET_ACCESS_KEY": "fake-secret-ray-jobs-9183",
           "AWS_SESSION_TOKEN": "fake-session-token-ray-jobs-5521", "MLFLOW_TRACKING_PASSWORD": "fake-mlflow-pw-0042"}


@pytest.fixture(scope="module")
def head():
    with ray_head('{"TRAIN_DRIVER": 4}') as address:  # the head advertises the driver resource, as on a cluster
        yield address


@pytest.fixture()
def client_env(tmp_path):
    # The submitting shell: tracking URI, S3 endpoint, region, and credentials that must stay here.
    return base_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db", AWS_ENDPOINT_URL="http://127.0.0.1:9",
                    AWS_REGION="us-east-1", **SECRETS)


def _no_secrets(*texts: str) -> None:
    for t in texts:
        for name, value in SECRETS.items():
            assert value not in t, f"{name}'s value leaked"


def _submitted_id(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("aim-"))


def test_submit_follow_success_and_job_record(head, client_env):
    from ray.job_submission import JobSubmissionClient

    r = aimctl("submit", "--address", head, "--follow", "--python", PY, "--", "model", "info", "aim-test", "--json",
               env=client_env)
    assert r.returncode == 0, r.stdout + r.stderr
    _no_secrets(r.stdout, r.stderr)
    sid = _submitted_id(r.stdout)
    assert sid.startswith("aim-model-info-") and sid.endswith("-1")
    info = json.loads(next(line for line in r.stdout.splitlines() if line.startswith('{"preset"')))
    assert info["preset"] == "aim-test" and info["train_flops_per_image"] > 0
    job = JobSubmissionClient(head).get_job_info(sid)
    assert job.status.value == "SUCCEEDED"
    _no_secrets(job.entrypoint, json.dumps(job.metadata), json.dumps(job.runtime_env))
    env_vars = job.runtime_env["env_vars"]
    assert env_vars["MLFLOW_TRACKING_URI"] == client_env["MLFLOW_TRACKING_URI"]
    assert env_vars["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9" and env_vars["AWS_REGION"] == "us-east-1"
    assert not any(k.startswith("AWS_") and ("SECRET" in k or "TOKEN" in k or "KEY_ID" in k) for k in env_vars)
    assert job.metadata["aim.command"] == "model info" and job.metadata["aim.base_id"] == sid.rsplit("-", 1)[0]
    assert Path(job.runtime_env["working_dir"]).name.startswith("_ray_pkg_") or "gcs://" in job.runtime_env["working_dir"]

    # Same command, same code: same prefix, next counter.
    again = aimctl("submit", "--address", head, "--python", PY, "--", "model", "info", "aim-test", "--json",
                   env=client_env)
    assert again.returncode == 0, again.stderr
    assert _submitted_id(again.stdout) == sid[:-2] + "-2"

    listed = aimctl("jobs", "list", "--address", head, "--json", "--prefix", sid.rsplit("-", 1)[0], env=client_env)
    assert listed.returncode == 0, listed.stderr
    assert {j["submission_id"] for j in json.loads(listed.stdout)} == {sid, sid[:-2] + "-2"}
    _no_secrets(listed.stdout)
    logs = aimctl("jobs", "logs", sid[:-2] + "-2", "--follow", "--address", head, env=client_env)
    assert logs.returncode == 0, logs.stderr
    stopped = aimctl("jobs", "stop", sid, "--address", head, env=client_env)
    assert stopped.returncode == 0 and "was not running" in stopped.stderr


def test_follow_exits_nonzero_when_the_job_fails(head, client_env):
    r = aimctl("submit", "--address", head, "--follow", "--python", PY, "--", "model", "info", "no-such-preset",
               env=client_env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAILED" in r.stderr and "unknown preset" in r.stdout + r.stderr
    _no_secrets(r.stdout, r.stderr)
