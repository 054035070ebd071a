"""FSDP2 on CPU (gloo): sharded checkpoints read whole (2 spawned processes, no Ray), and pre-training under
Ray Train with 2 workers: it trains, checkpoints (sharded), resumes exactly, matches DDP, resumes a DDP
checkpoint, and its checkpoint probes."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
import torch

from pipelines.config import parse_experiment
from tests.conftest import experiment

DEMO = type("D", (), {"pool_uri": "/p", "curated_uri": "/c"})  # a config that is only parsed, never trained


def _tiny(seed: int):
    """aim-test with its optimizer and scheduler, initialised from `seed`."""
    from aim_core import AIM

    cfg = parse_experiment(experiment(DEMO, Path("/tmp"), "x", scaling={"num_workers": 2}))
    torch.manual_seed(seed)
    model = AIM(cfg.aim_config())
    return model, cfg


def _step(model, forward, optimizer, images: torch.Tensor) -> float:
    prefix = model.sample_prefix_len(images.shape[0], torch.Generator().manual_seed(5))
    out = model.loss_from_predictions(images, forward(images, prefix), prefix)
    optimizer.zero_grad()
    out.loss.backward()
    optimizer.step()
    return float(out.loss.detach())


def _sharded_worker(rank: int, world: int, root: str, port: int) -> None:
    """One step of FSDP, then a sharded checkpoint in `root/rank<r>` (as each Ray worker writes its own
    directory) and a full one in `root/full<r>`; then the next step's loss, to compare after a restore."""
    import os

    import torch.distributed as dist

    from pipelines.train import parallel
    from pipelines.train.checkpoint import TrainState
    from pipelines.train.optim import build_optimizer, build_scheduler
    from pipelines.train.state_io import write_checkpoint

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model, cfg = _tiny(0)
    forward = parallel.parallelize(model, "fsdp", world, False, bf16=False)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.schedule)
    torch.manual_seed(100 + rank)
    _step(model, forward, optimizer, torch.rand(8, 3, 16, 16))
    state = TrainState(step=1, data={"epoch": 0, "batches_in_epoch": 1})
    for name, sharded in ((f"rank{rank}", True), (f"full{rank}", False)):
        write_checkpoint(Path(root) / name, model, optimizer, scheduler, state, "fsdp", rank, world, sharded)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def sharded_ckpt(tmp_path_factory) -> Path:
    """A 2-rank sharded checkpoint, merged as Ray Train merges the ranks' directories, and the full one."""
    import torch.multiprocessing as mp

    root = tmp_path_factory.mktemp("sharded")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_sharded_worker, args=(2, str(root), port), nprocs=2)
    for rank in (0, 1):
        shutil.copytree(root / f"rank{rank}", root / "merged", dirs_exist_ok=True)
    return root


def test_sharded_checkpoint_reads_as_full_state_on_cpu(sharded_ckpt):
    from pipelines.train.checkpoint import checkpoint_complete, load_state, read_meta

    meta = read_meta(sharded_ckpt / "merged")
    assert {k: meta[k] for k in ("step", "format", "strategy", "world_size")} == {
        "step": 1,
        "format": "sharded",
        "strategy": "fsdp",
        "world_size": 2,
    }
    assert meta["files"] == ["dcp/.metadata", "dcp/__0_0.distcp", "dcp/__1_0.distcp", "state.pt"]
    assert read_meta(sharded_ckpt / "full0")["format"] == "full" and not (sharded_ckpt / "full1").exists()
    got, want = load_state(sharded_ckpt / "merged"), load_state(sharded_ckpt / "full0")  # no process group here
    assert got["model"].keys() == want["model"].keys()
    assert all(torch.equal(got["model"][k], v) for k, v in want["model"].items())
    assert got["optimizer"]["param_groups"] == want["optimizer"]["param_groups"]
    for name, moments in want["optimizer"]["state"].items():
        assert all(torch.equal(got["optimizer"]["state"][name][k], v) for k, v in moments.items()), name
    assert got["step"] == 1 and got["data"] == {"epoch": 0, "batches_in_epoch": 1}
    assert load_state(sharded_ckpt / "merged", optimizer=False)["model"].keys() == want["model"].keys()
    import pyarrow.fs as pafs

    from pipelines.train.checkpoint import read_state

    remote = read_state(pafs.LocalFileSystem(), str(sharded_ckpt / "merged"))  # the object-storage path: a copy
    assert all(torch.equal(remote["model"][k], v) for k, v in want["model"].items())
    assert checkpoint_complete(None, str(sharded_ckpt / "merged"), meta)
    assert not checkpoint_complete(None, str(sharded_ckpt / "rank0"), meta), "rank 1's shard is missing there"


def test_sharded_checkpoint_missing_a_rank_is_never_picked(sharded_ckpt, tmp_path):
    """Each rank uploads its own shards: rank 0's meta.json may be there before rank 1's file. Such a
    directory is not taken as the latest checkpoint (nor by `aimctl probe`, which asks the same function)."""
    from pipelines.train.driver import latest_checkpoint

    cfg = parse_experiment(experiment(DEMO, tmp_path, "r"))
    run = Path(cfg.storage.path) / "r"
    shutil.copytree(sharded_ckpt / "merged", run / "checkpoint_a")
    shutil.copytree(sharded_ckpt / "rank0", run / "checkpoint_b")  # rank 1's shard never arrived
    meta = json.loads((run / "checkpoint_b" / "meta.json").read_text())
    (run / "checkpoint_b" / "meta.json").write_text(json.dumps({**meta, "step": 2}))
    path, meta = latest_checkpoint(cfg)
    assert path == str(run / "checkpoint_a") and meta["step"] == 1


def test_sharded_checkpoint_resumes_single_process_ddp(sharded_ckpt):
    """The reverse direction (sharded FSDP -> DDP/one process): weights and name-keyed optimizer state load."""
    from pipelines.train.checkpoint import load_state
    from pipelines.train.optim import build_optimizer, build_scheduler
    from pipelines.train.state_io import restore_checkpoint

    model, cfg = _tiny(1)
    optimizer = build_optimizer(model, cfg.optim)
    state = restore_checkpoint(
        sharded_ckpt / "merged", model, optimizer, build_scheduler(optimizer, cfg.schedule), "ddp"
    )
    full = load_state(sharded_ckpt / "full0")
    assert state.step == 1
    assert all(torch.equal(model.state_dict()[k], v) for k, v in full["model"].items())
    assert len(optimizer.state) == len(full["optimizer"]["state"])


def test_optimizer_state_keys_convert_both_ways():
    from pipelines.train.optim import build_optimizer
    from pipelines.train.state_io import _param_names, optim_to_ids, optim_to_names

    model, cfg = _tiny(0)
    optimizer = build_optimizer(model, cfg.optim)
    _step(model, model, optimizer, torch.rand(4, 3, 16, 16))
    by_id = optimizer.state_dict()
    names = _param_names(model, optimizer)
    by_name = optim_to_names(by_id, names)
    assert set(by_name["state"]) <= set(dict(model.named_parameters()))
    back = optim_to_ids(by_name, names)
    assert back["param_groups"] == by_id["param_groups"] and back["state"].keys() == by_id["state"].keys()
    assert optim_to_names(by_name, names) is by_name and optim_to_ids(by_id, names) is by_id


def test_sharded_option_rules():
    from pipelines.train.state_io import use_sharded

    def storage(**kw):
        return parse_experiment(experiment(DEMO, Path("/tmp"), "x", storage=kw)).storage

    assert not use_sharded(storage(), "fsdp", 1000) and use_sharded(storage(), "fsdp", 300_000_000)
    assert use_sharded(storage(sharded=True), "fsdp", 10) and not use_sharded(storage(sharded=True), "ddp", 10**9)
    assert not use_sharded(storage(sharded=False), "fsdp", 10**9)
    assert use_sharded(storage(sharded_min_params=10), "fsdp", 10)


# ---- Ray Train, 2 CPU workers (gloo) ----

SCALING = {"num_workers": 2, "cpus_per_worker": 0.5}


def _losses(cfg) -> dict[int, float]:
    from pipelines import tracking

    c = tracking.client(tracking.resolve_tracking_uri(cfg.tracking.uri))
    runs = c.search_runs(
        [c.get_experiment_by_name(cfg.tracking.experiment).experiment_id],
        filter_string=f"attributes.run_name = '{cfg.name}'",
    )
    assert len(runs) == 1
    return {m.step: m.value for m in c.get_metric_history(runs[0].info.run_id, "train/loss")}


def _cfg(demo, tmp, name: str, strategy: str):
    return parse_experiment(
        experiment(
            demo, tmp, name, scaling={**SCALING, "strategy": strategy}, storage={"checkpoint_every": 6, "sharded": True}
        )
    )


@pytest.fixture(scope="module")
def fsdp_runs(ray_local, demo_data, tmp_path_factory):
    """Five TorchTrainer fits: FSDP straight (12 steps); FSDP stopped at 4 and rerun; DDP stopped at 4, then
    rerun under FSDP (same name: resumes the DDP checkpoint). Sharding forced (`storage.sharded: true`)."""
    from pipelines.train.driver import pretrain

    tmp = tmp_path_factory.mktemp("fsdp")
    out = {"straight": _cfg(demo_data, tmp, "fsdp", "fsdp"), "resumed": _cfg(demo_data, tmp, "fsdp-resumed", "fsdp")}
    out["straight_res"] = pretrain(out["straight"], show_progress=False)
    out["first"] = pretrain(out["resumed"], stop_after=4, show_progress=False)
    out["second"] = pretrain(out["resumed"], show_progress=False)
    out["ddp"] = _cfg(demo_data, tmp, "ddp-then-fsdp", "ddp")
    out["ddp_first"] = pretrain(out["ddp"], stop_after=4, show_progress=False)
    out["ddp_meta"] = json.loads((Path(out["ddp_first"].checkpoint_uri) / "meta.json").read_text())
    out["to_fsdp"] = pretrain(_cfg(demo_data, tmp, "ddp-then-fsdp", "fsdp"), show_progress=False)
    return out


@pytest.mark.ray
def test_fsdp_trains_and_writes_sharded_checkpoints(fsdp_runs):
    cfg, res = fsdp_runs["straight"], fsdp_runs["straight_res"]
    assert res.step == 12 and res.resumed_from == 0
    losses = _losses(cfg)
    assert sorted(losses) == list(range(1, 13))
    assert sum(losses[s] for s in (10, 11, 12)) < 0.9 * sum(losses[s] for s in (1, 2, 3))
    ckpts = sorted(p for p in (Path(cfg.storage.path) / cfg.name).glob("checkpoint_*") if p.is_dir())
    assert len(ckpts) == 2 and res.checkpoint_uri == str(ckpts[-1])
    for ckpt in ckpts:
        meta = json.loads((ckpt / "meta.json").read_text())
        assert (meta["format"], meta["strategy"], meta["world_size"]) == ("sharded", "fsdp", 2)
        assert all((ckpt / f).is_file() for f in meta["files"]) and "dcp/__1_0.distcp" in meta["files"]
    assert [json.loads((c / "meta.json").read_text())["step"] for c in ckpts] == [6, 12]


@pytest.mark.ray
def test_fsdp_rerun_resumes_exactly(fsdp_runs):
    assert fsdp_runs["first"].step == 4
    assert fsdp_runs["second"].resumed_from == 4 and fsdp_runs["second"].step == 12
    a, b = _losses(fsdp_runs["straight"]), _losses(fsdp_runs["resumed"])
    assert sorted(b) == list(range(1, 13))
    for step in range(5, 13):
        assert abs(a[step] - b[step]) < 1e-5, (step, a[step], b[step])


@pytest.mark.ray
def test_fsdp_matches_ddp_and_resumes_a_ddp_checkpoint(fsdp_runs):
    assert (fsdp_runs["ddp_meta"]["format"], fsdp_runs["ddp_meta"]["strategy"]) == ("full", "ddp")
    assert fsdp_runs["to_fsdp"].resumed_from == 4 and fsdp_runs["to_fsdp"].step == 12
    fsdp, ddp = _losses(fsdp_runs["straight"]), _losses(fsdp_runs["ddp"])
    # Same seed, same data, fp32 both (FSDP's compute dtype follows scaling.precision). Measured here
    # (2026-12-01, 2 CPU workers): steps 1-4 (DDP vs FSDP) identical, |diff| = 0.0 (with 2 ranks the gradient
    # sums and the halving are exact either way); steps 5-12 (FSDP resumed from the DDP checkpoint vs FSDP
    # throughout) at most 1.2e-7 (one float32 ulp). 1e-4 leaves room for other reduction orders (more ranks,
    # another CPU); bf16 would not pass it.
    for step in range(1, 13):
        assert abs(fsdp[step] - ddp[step]) < 1e-4, (step, fsdp[step], ddp[step])
    last = json.loads((Path(fsdp_runs["to_fsdp"].checkpoint_uri) / "meta.json").read_text())
    assert (last["format"], last["strategy"], last["step"]) == ("sharded", "fsdp", 12)


@pytest.mark.ray
def test_probe_reads_a_sharded_fsdp_checkpoint(fsdp_runs):
    from pipelines.probe_runner import load_trunk, probe_checkpoint
    from pipelines.train.checkpoint import load_state

    cfg, res = fsdp_runs["straight"], fsdp_runs["straight_res"]
    model, _ = load_trunk(cfg, None)  # the run's latest: the sharded step-12 checkpoint
    want = load_state(res.checkpoint_uri, optimizer=False)["model"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in want.items())
    out = probe_checkpoint(cfg, res.checkpoint_uri)
    assert out.attentive_top1 > 15 and out.linear_top1 > 10, out  # 10 classes: chance is 10%
