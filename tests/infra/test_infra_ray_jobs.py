"""`aimctl submit` / `aimctl jobs` against a real local head (`ray start --head` on 127.0.0.1).

A short `aimctl pretrain` (4 steps of aim-test on generated demo data) runs as a Ray job with the project
uploaded as its working_dir; MLflow tracking reaches it only through `runtime_env.env_vars`
(MLFLOW_TRACKING_URI from the submitting shell). Credentials set in the submitting shell must appear
nowhere in the job (entrypoint, metadata, runtime_env) nor in what the CLI prints."""

from __future__ import annotations

import json

import pytest
import yaml
from infra_helpers import PY, aimctl, base_env, ray_head

pytestmark = pytest.mark.ray

SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAFAKEINFRATEST0001",
    "AWS_SECRET_ACCESS_KEY": "fake-secret-ray-jobs-9183",
    "AWS_SESSION_TOKEN": "fake-session-token-ray-jobs-5521",
    "MLFLOW_TRACKING_PASSWORD": "fake-mlflow-pw-0042",
}


@pytest.fixture(scope="module")
def head():
    with ray_head('{"TRAIN_DRIVER": 4}') as address:  # the head advertises the driver resource, as on a cluster
        yield address


@pytest.fixture()
def client_env(tmp_path):
    # The submitting shell: tracking URI, S3 endpoint, region, and credentials that must stay here.
    return base_env(
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db",
        AWS_ENDPOINT_URL="http://127.0.0.1:9",
        AWS_REGION="us-east-1",
        **SECRETS,
    )


def _no_secrets(*texts: str) -> None:
    for t in texts:
        for name, value in SECRETS.items():
            assert value not in t, f"{name}'s value leaked"


def _submitted_id(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("aim-"))


def _tiny_experiment(tmp_path) -> str:
    """An aim-test experiment on demo data (written by the real pipelines.data.demo), local storage, and no
    tracking.uri: the job must get MLflow from MLFLOW_TRACKING_URI passed through the runtime env."""
    from pipelines.data.demo import write_demo

    demo = write_demo(str(tmp_path / "demo"), shards=1, per_shard=64, curated_train=64, curated_test=32, size=16)
    exp = {
        "name": "infra-submit",
        "seed": 0,
        "model": {"preset": "aim-test", "img_size": 16},
        "data": {
            "pool": {"uri": demo.pool_uri, "top_fraction": 1.0},
            "curated": {"uri": demo.curated_uri},
            "max_bad_fraction": 0.2,
            "decode": {"num_cpus": 0.25, "concurrency": 1},
        },
        "optim": {"batch_size": 8},
        "schedule": {"steps": 50, "warmup_fraction": 0.1},
        "scaling": {"num_workers": 1, "cpus_per_worker": 0.5, "shuffle_buffer": 16},
        "storage": {"path": str(tmp_path / "runs"), "checkpoint_every": 2},
        "tracking": {"experiment": "infra-submit", "log_every": 1},
    }
    path = tmp_path / "infra-submit.yaml"
    path.write_text(yaml.safe_dump(exp))
    return str(path)


def test_submit_pretrain_follow_and_job_record(head, client_env, tmp_path):
    from mlflow import MlflowClient
    from ray.job_submission import JobSubmissionClient

    exp = _tiny_experiment(tmp_path)
    r = aimctl(
        "submit",
        "--address",
        head,
        "--follow",
        "--python",
        PY,
        "--",
        "pretrain",
        exp,
        "--set",
        "schedule.steps=4",
        env=client_env,
        timeout=300,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]
    _no_secrets(r.stdout, r.stderr)
    sid = _submitted_id(r.stdout)
    assert sid.startswith("aim-pretrain-infra-submit-") and sid.endswith("-1")

    job = JobSubmissionClient(head).get_job_info(sid)
    assert job.status.value == "SUCCEEDED"
    assert job.entrypoint.endswith(f"-m pipelines.cli pretrain {exp} --set schedule.steps=4")
    _no_secrets(job.entrypoint, json.dumps(job.metadata), json.dumps(job.runtime_env))
    env_vars = job.runtime_env["env_vars"]
    assert env_vars["MLFLOW_TRACKING_URI"] == client_env["MLFLOW_TRACKING_URI"]
    assert env_vars["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9" and env_vars["AWS_REGION"] == "us-east-1"
    assert not (set(env_vars) & set(SECRETS))
    assert job.metadata["aim.command"] == "pretrain" and job.metadata["aim.base_id"] == sid.rsplit("-", 1)[0]
    assert "_ray_pkg_" in job.runtime_env["working_dir"], "the project was uploaded as the working_dir"

    # The job tracked into the submitter's MLflow (it only knew the URI through the runtime env).
    c = MlflowClient(client_env["MLFLOW_TRACKING_URI"])
    runs = c.search_runs([c.get_experiment_by_name("infra-submit").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.metrics["train/step"] == 4

    listed = aimctl("jobs", "list", "--address", head, "--json", env=client_env)
    assert listed.returncode == 0, listed.stderr
    assert sid in {j["submission_id"] for j in json.loads(listed.stdout)}
    _no_secrets(listed.stdout)
    stopped = aimctl("jobs", "stop", sid, "--address", head, env=client_env)
    assert stopped.returncode == 0 and "was not running" in stopped.stderr


def test_failures_exit_nonzero_and_resubmissions_get_the_next_id(head, client_env):
    cmd = ["model", "info", "no-such-preset"]
    r = aimctl("submit", "--address", head, "--follow", "--python", PY, "--", *cmd, env=client_env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAILED" in r.stderr and "unknown preset" in r.stdout + r.stderr
    _no_secrets(r.stdout, r.stderr)
    sid = _submitted_id(r.stdout)
    assert sid.startswith("aim-model-info-") and sid.endswith("-1")
    # Same command, same code: same prefix, next counter. (The prefix hashes uncommitted changes too: if
    # someone edited the tree in between, it is a new prefix and starts again at 1.)
    again = aimctl("submit", "--address", head, "--python", PY, "--", *cmd, env=client_env)
    assert again.returncode == 0, again.stderr
    sid2 = _submitted_id(again.stdout)
    assert sid2.startswith("aim-model-info-")
    assert sid2 == (
        sid[:-2] + "-2" if sid2.rsplit("-", 1)[0] == sid.rsplit("-", 1)[0] else sid2.rsplit("-", 1)[0] + "-1"
    )
    logs = aimctl("jobs", "logs", sid, "--address", head, env=client_env)
    assert logs.returncode == 0 and "unknown preset" in logs.stdout
