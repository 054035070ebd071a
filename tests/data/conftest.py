"""Fixtures for the data tests: a moto S3 server with real authentication, one local Ray per session,
and the demo data written once locally and once to S3."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

import pytest

from pipelines.data.config import S3Config
from pipelines.data.raytools import LOCAL_RAY_ENV

BUCKET = "aim-data"
DEMO = {"shards": 4, "per_shard": 150, "curated_train": 300, "curated_test": 60, "size": 48, "seed": 0}


@dataclass(frozen=True)
class S3Env:
    endpoint: str
    key: str
    secret: str

    @property
    def cfg(self) -> S3Config:
        return S3Config(endpoint_url=self.endpoint, region="us-east-1")


def _iam_user(endpoint: str) -> tuple[str, str]:
    import boto3

    kw = {
        "endpoint_url": endpoint,
        "region_name": "us-east-1",
        "aws_access_key_id": "bootstrap",
        "aws_secret_access_key": "bootstrap",
    }
    iam = boto3.client("iam", **kw)
    iam.create_user(UserName="aim-tests")
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    iam.put_user_policy(UserName="aim-tests", PolicyName="s3", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="aim-tests")["AccessKey"]
    boto3.client("s3", **kw).create_bucket(Bucket=BUCKET)
    return key["AccessKeyId"], key["SecretAccessKey"]


@pytest.fixture(scope="session")
def s3_env():
    """A moto S3 endpoint on 127.0.0.1 that checks signatures (wrong keys are refused), with its
    credentials in the environment for the whole session."""
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    key, secret = _iam_user(endpoint)
    old_auth = settings.INITIAL_NO_AUTH_ACTION_COUNT
    settings.INITIAL_NO_AUTH_ACTION_COUNT, ActionAuthenticatorMixin.request_count = 0, 0
    old_env = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")}
    os.environ.update(AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY=secret)
    os.environ.pop("AWS_SESSION_TOKEN", None)
    yield S3Env(endpoint, key, secret)
    for k, v in old_env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    settings.INITIAL_NO_AUTH_ACTION_COUNT = old_auth
    server.stop()


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray (2 CPUs) for every Ray test of the session."""
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            logging_level="warning",
            runtime_env={"env_vars": LOCAL_RAY_ENV},
        )
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture
def preserve_order(ray_session):
    ctx = ray_session.data.DataContext.get_current()
    old = ctx.execution_options.preserve_order
    ctx.execution_options.preserve_order = True
    yield
    ctx.execution_options.preserve_order = old


@pytest.fixture(scope="session")
def demo_local(tmp_path_factory):
    from pipelines.data.demo import write_demo

    root = tmp_path_factory.mktemp("demo")
    return str(root), write_demo(str(root), **DEMO)


@pytest.fixture(scope="session")
def demo_s3(s3_env):
    from pipelines.data.demo import write_demo

    uri = f"s3://{BUCKET}/demo"
    return uri, write_demo(uri, s3=s3_env.cfg, **DEMO)
