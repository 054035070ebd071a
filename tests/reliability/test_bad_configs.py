"""Bad configs: malformed experiment and sweep files, run through the real CLI (a subprocess each), exit 2
with ONE line on stderr that names the field, and create nothing: no storage directory, no MLflow database.

Each case runs in its own empty working directory holding only its YAML file; the experiment's storage
path (`runs`) and the default MLflow URI (`sqlite:///<cwd>/mlflow.db`) both point inside it, so "nothing
created" is "the directory still holds only the YAML file".
"""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor

import pytest
from reliability_helpers import aimctl, clean_env, write_yaml

pytestmark = pytest.mark.reliability

VALID = {
    "name": "bad",
    "seed": 0,
    "model": {"preset": "aim-test", "img_size": 16},
    "data": {"pool": {"uri": "pool"}, "curated": {"uri": "curated"}},
    "optim": {"batch_size": 16},
    "schedule": {"steps": 4},
    "storage": {"path": "runs"},
    "tracking": {"experiment": "bad-configs"},
}


def exp(**changes) -> dict:
    """VALID with dotted-key changes (`optim__batch_size=-8`); a value of `...` deletes the key."""
    d = copy.deepcopy(VALID)
    for key, value in changes.items():
        node, parts = d, key.split("__")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        if value is ...:
            node.pop(parts[-1], None)
        else:
            node[parts[-1]] = value
    return d


def sweep(**fields) -> dict:
    base = {
        "name": "bad-sweep",
        "experiment": {k: v for k, v in VALID.items() if k != "name"},
        "axes": {"order": {"raster": {"model.order": "raster"}, "spiral": {"model.order": "spiral"}}},
    }
    base.update(fields)
    return {k: v for k, v in base.items() if v is not ...}


# (case id, command, file content, extra CLI args, text the one line must contain (the field))
CASES = [  # each one a real `python -m pipelines.cli` process
    ("unknown-top-level-key", "pretrain", exp(optimizer={"lr": 1e-3}), [], "optimizer: unknown key"),
    ("unknown-nested-key", "pretrain", exp(optim__learning_rate=1e-3), [], "optim.learning_rate: unknown key"),
    ("wrong-type", "pretrain", exp(schedule__steps="many"), [], "schedule.steps"),
    ("negative-batch", "pretrain", exp(optim__batch_size=-8), [], "optim.batch_size"),
    ("heads-not-dividing-width", "pretrain", exp(model__width=30, model__num_heads=4), [], "model.num_heads"),
    ("unknown-target", "pretrain", exp(target={"name": "vq"}), [], "target.name"),
    ("unknown-order", "pretrain", exp(model__order="zigzag"), [], "model.order"),
    ("unknown-head", "pretrain", exp(model__head="conv"), [], "model.head"),
    ("unknown-preset", "pretrain", exp(model__preset="aim-99b"), [], "model.preset"),
    ("image-not-divisible-by-patch", "pretrain", exp(model__img_size=18, model__patch_size=4), [], "model.img_size"),
    ("prefix-with-one-patch", "pretrain", exp(model__attention="prefix", model__patch_size=16), [], "model.attention"),
    ("bad-crop-scale", "pretrain", exp(data__augment={"crop_scale": [0.9, 0.2]}), [], "data.augment.crop_scale"),
    (
        "threshold-and-top-fraction",
        "pretrain",
        exp(data__pool__threshold=0.3, data__pool__top_fraction=0.2),
        [],
        "top_fraction",
    ),
    ("worker-resources-cpu", "pretrain", exp(scaling__worker_resources={"CPU": 2}), [], "scaling.worker_resources"),
    ("worker-resources-zero", "pretrain", exp(scaling__worker_resources={"spot": 0}), [], "scaling.worker_resources"),
    ("bad-yaml", "pretrain", "name: x\nmodel: {preset: aim-test\n", [], "not valid YAML"),
    ("set-typo", "pretrain", exp(), ["--set", "optim.lrr=1e-3"], "optim.lrr: unknown key"),
    ("sweep-base-and-experiment", "sweep", sweep(base="other.yaml"), [], "base"),
    ("sweep-empty-axis", "sweep", sweep(axes={"order": {}}), [], "axis 'order' has no values"),
    (
        "sweep-axis-value-not-a-mapping",
        "sweep",
        sweep(axes={"order": {"raster": "model.order=raster"}}),
        [],
        "axes.order.raster",
    ),
    ("sweep-trial-invalid", "sweep", sweep(axes={"order": {"zigzag": {"model.order": "zigzag"}}}), [], "model.order"),
]

MORE_CASES = [  # the same CLI code in this process (typer's runner): cheap breadth
    (
        "batch-not-divisible-by-workers",
        "pretrain",
        exp(optim__batch_size=10, scaling={"num_workers": 4}),
        [],
        "optim.batch_size",
    ),
    (
        "endpoint-without-scheme",
        "pretrain",
        exp(data__s3={"endpoint_url": "127.0.0.1:9000"}),
        [],
        "data.s3.endpoint_url",
    ),
    ("negative-retry-window", "pretrain", exp(data__s3={"retry_seconds": -1}), [], "data.s3.retry_seconds"),
    ("clip-zero", "pretrain", exp(optim__clip_grad=0), [], "optim.clip_grad"),
    ("missing-data-section", "pretrain", exp(data=...), [], "data"),
    ("unsafe-name", "pretrain", exp(name="my run"), [], "name"),
    ("top-level-not-a-mapping", "pretrain", "- name: x\n", [], "top level must be a mapping"),
    ("set-without-equals", "pretrain", exp(), ["--set", "optim.lr"], "--set 'optim.lr'"),
    ("set-wrong-type", "pretrain", exp(), ["--set", "optim.batch_size=lots"], "optim.batch_size"),
    ("sweep-neither-base-nor-experiment", "sweep", sweep(experiment=...), [], "experiment"),
    ("sweep-no-axes", "sweep", sweep(axes={}), [], "axes"),
    ("sweep-unknown-key", "sweep", sweep(trials=3), [], "trials: unknown key"),
    ("sweep-unknown-mode", "sweep", sweep(mode="random"), [], "mode"),
    ("sweep-missing-base-file", "sweep", sweep(base="nope.yaml", experiment=...), [], "base: no such experiment file"),
    ("sweep-bad-yaml", "sweep", "name: [x\n", [], "not valid YAML"),
    ("s3-without-bucket", "pretrain", exp(), ["--set", "storage.path=s3://"], "storage.path: 's3://': an s3:// URI"),
    ("pool-unknown-scheme", "pretrain", exp(data__pool__uri="gs://b/pool"), [], "data.pool.uri: 'gs://b/pool'"),
    ("tracking-unknown-scheme", "pretrain", exp(), ["--set", "tracking.uri=ftp://x"], "tracking.uri: 'ftp://x'"),
    ("subset-not-a-uid-file", "pretrain", exp(data__pool__subset="uids.csv"), [], "data.pool.subset: 'uids.csv'"),
    ("subset-unknown-scheme", "pretrain", exp(data__pool__subset="gs://b/u.npy"), [], "data.pool.subset: 'gs://"),
    ("subset-not-a-string", "pretrain", exp(data__pool__subset=["a.npy"]), [], "data.pool.subset"),
    (
        "scores-without-a-score-rule",
        "pretrain",
        exp(data__pool__subset="u.npy", data__pool__scores="scores/"),
        [],
        "scores: a subset alone scores nothing",
    ),
    ("probe-block-beyond-depth", "pretrain", exp(), ["--set", "probe.blocks=[99]"], "probe.blocks: [99] out of range"),
]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Run every case's CLI process (four at a time), keyed by case id: (returncode, stderr, stdout, cwd)."""

    def run(case):
        cid, cmd, content, extra, _ = case
        cwd = tmp_path_factory.mktemp(cid)
        name = "sweep.yaml" if cmd == "sweep" else "experiment.yaml"
        write_yaml(cwd / name, content)
        proc = aimctl(cmd, name, *extra, cwd=cwd, env=clean_env())
        out, err = proc.communicate(timeout=180)
        return cid, (proc.returncode, err.decode(), out.decode(), cwd, name)

    with ThreadPoolExecutor(4) as pool:
        return dict(pool.map(run, CASES))


def test_the_valid_files_are_valid(tmp_path):
    """Control: the files the cases mutate load cleanly, so each failure below is the mutation's."""
    from pipelines.config import load_experiment
    from pipelines.sweep.spec import load_sweep

    load_experiment(write_yaml(tmp_path / "e.yaml", exp()))
    spec, trials = load_sweep(write_yaml(tmp_path / "s.yaml", sweep()))
    assert len(trials) == 3


def test_at_least_15_cases():
    ids = [c[0] for c in CASES + MORE_CASES]
    assert len(CASES) >= 15 and len(set(ids)) == len(ids)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_config_exits_2_with_one_line_and_creates_nothing(outcomes, case):
    cid, _, _, _, field = case
    _check(*outcomes[cid], field)


@pytest.mark.parametrize("case", MORE_CASES, ids=[c[0] for c in MORE_CASES])
def test_more_bad_configs_in_process(tmp_path, monkeypatch, case):
    from typer.testing import CliRunner

    from pipelines.cli import app

    _, cmd, content, extra, field = case
    name = "sweep.yaml" if cmd == "sweep" else "experiment.yaml"
    write_yaml(tmp_path / name, content)
    monkeypatch.chdir(tmp_path)
    for var in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    r = CliRunner().invoke(app, [cmd, name, *extra])
    _check(r.exit_code, r.stderr, r.stdout, tmp_path, name, field)


def _check(code: int, err: str, out: str, cwd, name: str, field: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, f"exit {code}\nstderr:\n{err}\nstdout:\n{out}"
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    assert lines[0].startswith("error: ") and field in lines[0], lines[0]
    assert "Traceback" not in err + out
    assert sorted(p.name for p in cwd.iterdir()) == [name], "the CLI created files (storage or MLflow)"
