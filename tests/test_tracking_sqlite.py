"""A new SQLite MLflow store opened by several processes at once: every one of them gets its run (MLflow's
table creation and migrations run once, under a lock, instead of racing)."""

from __future__ import annotations

import multiprocessing as mp

from pipelines import tracking


def _open_and_log(uri: str, i: int, out) -> None:
    try:
        c = tracking.client(uri)
        run_id, _ = tracking.get_or_create_run(c, "race", f"key-{i}", f"run-{i}")
        c.log_metric(run_id, "x", float(i))
        out.put((i, "ok"))
    except Exception as e:  # noqa: BLE001 - reported to the test
        out.put((i, f"{type(e).__name__}: {str(e)[:300]}"))


def test_fresh_sqlite_store_opened_by_four_processes_at_once(tmp_path):
    uri = f"sqlite:///{tmp_path / 'sub' / 'mlflow.db'}"  # its directory does not exist yet either
    ctx = mp.get_context("spawn")
    out, start = ctx.Queue(), []
    for i in range(4):
        p = ctx.Process(target=_open_and_log, args=(uri, i, out))
        p.start()
        start.append(p)
    results = dict(out.get(timeout=180) for _ in start)
    for p in start:
        p.join(timeout=30)
    assert results == {i: "ok" for i in range(4)}, results
    runs = tracking.client(uri).search_runs([tracking.client(uri).get_experiment_by_name("race").experiment_id])
    assert sorted(r.info.run_name for r in runs) == [f"run-{i}" for i in range(4)]
