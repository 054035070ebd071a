"""`aimctl model import/export` with Apple's weights and the checkpoint on S3 (moto endpoint), and
`aimctl probe --checkpoint s3://...`'s loader on that checkpoint."""

from __future__ import annotations

import io

import torch
from typer.testing import CliRunner

import aim_core
from aim_core import ml_aim
from pipelines.cli import app
from pipelines.config import ExperimentConfig

BUCKET = "aim-data"  # the bucket tests/data/conftest.py creates


def test_import_and_export_through_s3(s3_env, monkeypatch, tmp_path):
    import boto3

    from pipelines.probe_runner import load_trunk

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_env.endpoint)
    s3 = boto3.client("s3", endpoint_url=s3_env.endpoint, region_name="us-east-1")
    torch.manual_seed(0)
    model = aim_core.build_model("aim-test").eval()
    backbone, _ = ml_aim.trunk_to_ml_aim(model.state_dict())
    buf = io.BytesIO()
    torch.save(backbone, buf)
    s3.put_object(Bucket=BUCKET, Key="apple/backbone.pth", Body=buf.getvalue())
    src, ckpt = f"s3://{BUCKET}/apple/backbone.pth", f"s3://{BUCKET}/imported/aim-test"
    r = CliRunner().invoke(app, ["model", "import", src, "--out", ckpt])
    assert r.exit_code == 0, r.stderr
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="imported/")["Contents"]}
    assert keys == {"imported/aim-test/state.pt", "imported/aim-test/meta.json"}
    cfg = ExperimentConfig.model_validate(
        {
            "name": "s3",
            "model": {"preset": "aim-test"},
            "data": {"pool": {"uri": "/unused"}, "curated": {"uri": "/unused"}},
        }
    )
    loaded, _ = load_trunk(cfg, ckpt)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded.extract_features(x, [1]), model.extract_features(x, [1]))
    r = CliRunner().invoke(app, ["model", "export", ckpt, "--out", f"s3://{BUCKET}/exported/aim-test.pth"])
    assert r.exit_code == 0, r.stderr
    body = s3.get_object(Bucket=BUCKET, Key="exported/aim-test.pth")["Body"].read()
    back = torch.load(io.BytesIO(body), weights_only=True)
    assert set(back) == set(backbone) and all(torch.equal(back[k], backbone[k]) for k in backbone)
    r = CliRunner().invoke(app, ["model", "import", f"s3://{BUCKET}/apple/missing.pth", "--out", ckpt])
    assert r.exit_code == 2 and "missing.pth: not found" in r.stderr, r.stderr
