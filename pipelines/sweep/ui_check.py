"""Check a finished sweep in MLflow's UI with a real headless browser; optionally save a screenshot.

    python -m pipelines.sweep.ui_check --tracking-uri sqlite:///$PWD/demo/mlflow.db --sweep demo \\
        --screenshot docs/mlflow_sweep_chart.png

Starts `mlflow server` on 127.0.0.1 (a free port) over the sweep's store, opens the sweep's chart views
(pipelines.sweep.mlflow_view) in headless Chromium (`--dump-dom`; MLflow's UI is a single-page app, so it
gets a virtual-time budget to render) and checks that the runs list, the groups and a grouped chart are
there. Exit status 1 with the problems listed when not.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pipelines import tracking
from pipelines.sweep import mlflow_view

__all__ = ["find_browser", "mlflow_server", "dump_dom", "visible_text", "screenshot", "check_sweep", "UICheck"]

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
BUDGET_MS = 40_000  # virtual time for the app to fetch runs and draw charts (real time is about a third)


def find_browser() -> str | None:
    """$AIM_BROWSER, else the first Chromium-like browser on PATH, else None."""
    env = os.environ.get("AIM_BROWSER")
    if env:
        return shutil.which(env) or (env if Path(env).is_file() else None)
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        time.sleep(0.5)
    raise TimeoutError(f"mlflow server not ready at {url} after {timeout:.0f} s")


@contextlib.contextmanager
def mlflow_server(backend_uri: str, timeout: float = 90) -> Iterator[str]:
    """A real `mlflow server` on 127.0.0.1 over `backend_uri`; yields its base URL, stops it afterwards."""
    port = _free_port()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    mlflow = Path(sys.executable).with_name("mlflow")  # this environment's, else the one on PATH
    mlflow = mlflow if mlflow.is_file() else Path(shutil.which("mlflow") or "mlflow")
    cmd = [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([*cmd, "--backend-store-uri", backend_uri], env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, proc, timeout)
        yield url
    except Exception:
        log.seek(0)
        sys.stderr.write(log.read().decode(errors="replace")[-3000:])
        raise
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _browser_cmd(browser: str, budget_ms: int) -> list[str]:
    return [
        browser,
        "--headless",
        "--no-sandbox",  # we run as root in CI containers
        "--disable-gpu",
        "--hide-scrollbars",
        "--window-size=1600,1000",
        f"--virtual-time-budget={budget_ms}",
    ]


def dump_dom(browser: str, url: str, budget_ms: int = BUDGET_MS, timeout: float = 180) -> str:
    """The page's DOM after the app had `budget_ms` of virtual time to render."""
    with tempfile.TemporaryDirectory() as profile:
        cmd = [*_browser_cmd(browser, budget_ms), f"--user-data-dir={profile}", "--dump-dom", url]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return out.stdout


def screenshot(browser: str, url: str, path: Path, budget_ms: int = BUDGET_MS, timeout: float = 180) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        cmd = [*_browser_cmd(browser, budget_ms), f"--user-data-dir={profile}", f"--screenshot={path.resolve()}", url]
        subprocess.run(cmd, capture_output=True, timeout=timeout, check=True)
    return path


def visible_text(dom: str) -> str:
    """The DOM's text without scripts and styles, whitespace collapsed."""
    text = re.sub(r"<script.*?</script>|<style.*?</style>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", text)))


@dataclass
class UICheck:
    urls: dict[str, str]  # view name -> URL checked
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _expect(check: UICheck, view: str, text: str, needles: list[str]) -> None:
    missing = [n for n in needles if n not in text]
    if missing:
        check.problems.append(f"{view}: not on the page: {missing} (page text starts: {text[:300]!r})")


def _sweep_runs(c, sweep: str) -> tuple[str, list]:
    """(experiment id, child runs) of the sweep named `sweep`."""
    found = c.search_runs(
        [e.experiment_id for e in c.search_experiments()], filter_string=f"tags.`aim.run_key` = 'sweep:{sweep}'"
    )
    if not found:
        raise LookupError(f"no sweep named {sweep!r} in MLflow")
    parent = found[0]
    exp_id = parent.info.experiment_id
    kids = c.search_runs([exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    return exp_id, kids


def check_sweep(backend_uri: str, sweep: str, browser: str, axis: str, shot: Path | None = None) -> UICheck:
    """Open the experiment, the sweep's grouped view and `axis`'s view; check what each shows."""
    c = tracking.client(backend_uri)
    exp_id, kids = _sweep_runs(c, sweep)
    kind = c.get_experiment(exp_id).tags.get(mlflow_view.EXPERIMENT_KIND_TAG)
    keys = {"all": mlflow_view.view_key(sweep, None), axis: mlflow_view.view_key(sweep, axis)}
    values = sorted({k.data.params["value"] for k in kids if k.data.tags.get("axis") in (axis, "base")})
    names = sorted(k.info.run_name for k in kids if k.data.tags.get("axis") in (axis, "base"))
    with mlflow_server(backend_uri) as url:
        urls = {"experiment": f"{url}/#/experiments/{exp_id}?workflowType=machine_learning"}
        urls.update({n: mlflow_view.view_url(url, exp_id, k) for n, k in keys.items()})
        check = UICheck(urls)
        if kind != mlflow_view.TRAINING_KIND:
            check.problems.append(f"experiment tag {mlflow_view.EXPERIMENT_KIND_TAG} is {kind!r}")
        landing = visible_text(dump_dom(browser, urls["experiment"]))
        _expect(check, "experiment", landing, [f"Runs - Experiment {exp_id}", "Run Name", sweep])
        page = visible_text(dump_dom(browser, urls[axis]))
        _expect(check, axis, page, ["Group by: value", *names, *(f"Group: {v}" for v in values)])
        _expect(check, axis, page, ["train/loss", *(f"{v} (train/loss)" for v in values)])
        _expect(check, "all", visible_text(dump_dom(browser, urls["all"])), ["Group by:", "Group:"])
        if shot is not None:
            screenshot(browser, urls[axis], shot)
    return check


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tracking-uri", required=True, help="the sweep's MLflow store, e.g. sqlite:////abs/mlflow.db")
    ap.add_argument("--sweep", required=True, help="the sweep's name")
    ap.add_argument("--axis", default="target", help="the axis whose view is checked (and shot)")
    ap.add_argument("--screenshot", type=Path, default=None, help="save a PNG of that axis's chart view")
    args = ap.parse_args(argv)
    browser = find_browser()
    if browser is None:
        print("no Chromium found: run scripts/install_browser.sh (or set AIM_BROWSER)", file=sys.stderr)
        return 2
    res = check_sweep(tracking.resolve_tracking_uri(args.tracking_uri), args.sweep, browser, args.axis, args.screenshot)
    for name, url in res.urls.items():
        print(f"{name}: {url}")
    for p in res.problems:
        print(f"PROBLEM: {p}", file=sys.stderr)
    print("UI check:", "ok" if res.ok else f"{len(res.problems)} problem(s)")
    return 0 if res.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
