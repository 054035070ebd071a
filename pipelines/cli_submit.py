"""`aimctl submit -- COMMAND...` and `aimctl jobs list|status|logs|stop`: Ray Jobs on a (remote) cluster.

Credentials never travel with a job (see pipelines/submit.py); the cluster's nodes get them from an
instance profile (AWS) or a Kubernetes Secret / service account (KubeRay).
"""

from __future__ import annotations

import json

import typer

from pipelines.cli_common import console, fail

ADDRESS_HELP = "Ray dashboard / Jobs API address of the head, e.g. http://127.0.0.1:8265 (via an SSH or kubectl tunnel)"
ADDRESS_ENV = ["RAY_API_SERVER_ADDRESS", "AIM_RAY_JOBS_ADDRESS"]

jobs_app = typer.Typer(help="List, inspect and stop Ray jobs submitted with `aimctl submit`.", no_args_is_help=True)


def _address(address: str | None) -> str:
    from pipelines.submit import DEFAULT_ADDRESS

    address = address or DEFAULT_ADDRESS
    return address if "://" in address else f"http://{address}"


def _client_or_fail(address: str):
    from pipelines.submit import client

    try:
        return client(address)
    except typer.Exit:
        raise
    except (ConnectionError, RuntimeError, ValueError) as e:
        fail(f"cannot reach the Ray Jobs API at {address}: {str(e).splitlines()[0]}", code=1)


def submit(
    ctx: typer.Context,
    command: list[str] = typer.Argument(
        None, metavar="-- COMMAND...", help="the aimctl command to run on the cluster, after `--`"
    ),
    address: str = typer.Option(None, "--address", envvar=ADDRESS_ENV, help=ADDRESS_HELP),
    follow: bool = typer.Option(
        False, "--follow", "-f", help="stream the job's logs until it ends; exit 1 unless it succeeded"
    ),
    env: list[str] = typer.Option(
        [],
        "--env",
        help="also pass NAME (from your environment) or NAME=VALUE to the job (repeatable; credentials are refused)",
    ),
    python: str = typer.Option("python", "--python", help="the Python on the cluster's nodes"),
    driver_resource: str = typer.Option(
        "auto",
        "--driver-resource",
        help="custom resource the job's driver requests (1 unit): 'auto' = "
        "TRAIN_DRIVER when the cluster has it; '' for none",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the job that would be submitted (JSON) and exit"),
) -> None:
    """Run any aimctl command as a Ray job on a cluster.

    Example: `aimctl submit --address http://HEAD:8265 -- pretrain exp.yaml`.

    The project directory is uploaded as the job's working directory; MLFLOW_TRACKING_URI, the S3 endpoint
    and the region are passed on; credentials never are. The submission id is printed (and is the same
    prefix every time for the same command on the same code).
    """
    from pipelines.submit import SubmitError, build_request, redact

    argv = list(command or []) + list(ctx.args)
    address = _address(address)
    try:
        req = build_request(
            argv,
            extra_env=env,
            python=python,
            driver_resource=None if driver_resource == "auto" else (driver_resource or None),
        )
    except SubmitError as e:
        fail(str(e))
    if driver_resource == "auto" and not dry_run:
        from pipelines.submit import resolve_driver_resource

        name, note = resolve_driver_resource(address, "auto")
        req.entrypoint_resources = {name: 1.0} if name else {}
        if note:
            req.warnings.append(note)
    for w in req.warnings:
        console.print(f"[yellow]warning:[/] {w}", highlight=False)
    if dry_run:
        print(
            redact(
                json.dumps(
                    {
                        "submission_id_prefix": req.base_id,
                        "entrypoint": req.entrypoint,
                        "entrypoint_resources": (
                            req.entrypoint_resources
                            if driver_resource != "auto"
                            else "auto: {TRAIN_DRIVER: 1} if the cluster advertises it"
                        ),
                        "runtime_env": req.runtime_env,
                        "metadata": req.metadata,
                    },
                    indent=1,
                )
            )
        )
        return
    from pipelines.submit import submit as do_submit

    try:
        sid = do_submit(req, address)
    except SubmitError as e:
        fail(str(e), code=1)
    except typer.Exit:
        raise
    except (ConnectionError, RuntimeError, ValueError) as e:
        fail(f"submission to {address} failed: {redact(str(e).splitlines()[0])}", code=1)
    console.print(f"[green]submitted[/] {sid}: {redact(req.entrypoint)}", highlight=False, soft_wrap=True)
    print(sid)
    if not follow:
        console.print(
            f"follow: aimctl jobs logs {sid} --follow --address {address}   stop: aimctl jobs stop {sid}",
            highlight=False,
            soft_wrap=True,
        )
        return
    _follow_and_exit(address, sid)


def _follow_and_exit(address: str, sid: str) -> None:
    from pipelines.submit import follow as do_follow

    try:
        status = do_follow(address, sid, write=print)
    except KeyboardInterrupt:
        console.print(
            f"\nstopped following; the job goes on. Stop it with: aimctl jobs stop {sid} --address {address}",
            highlight=False,
        )
        raise typer.Exit(130) from None
    colour = "green" if status == "SUCCEEDED" else "red"
    console.print(f"[{colour}]{sid}: {status}[/]", highlight=False)
    if status != "SUCCEEDED":
        raise typer.Exit(1)


@jobs_app.command("list")
def list_jobs(
    address: str = typer.Option(None, "--address", envvar=ADDRESS_ENV, help=ADDRESS_HELP),
    prefix: str = typer.Option("", "--prefix", help="only ids starting with this (e.g. an id without its -<n>)"),
    all_jobs: bool = typer.Option(False, "--all", help="include jobs not submitted by aimctl"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """The cluster's jobs, newest first."""
    from pipelines.submit import redact

    address = _address(address)
    jobs = _client_or_fail(address).list_jobs()
    rows = []
    for j in sorted(jobs, key=lambda j: j.start_time or 0, reverse=True):
        sid = j.submission_id or j.job_id or ""
        if not sid.startswith(prefix) or (not all_jobs and not sid.startswith("aim-")):
            continue
        rows.append(
            {
                "submission_id": sid,
                "status": str(j.status.value),
                "entrypoint": redact(j.entrypoint or ""),
                "start_time": j.start_time,
                "end_time": j.end_time,
                "message": redact(j.message or ""),
            }
        )
    if as_json:
        print(json.dumps(rows))
        return
    from rich.table import Table

    t = Table(title=f"Ray jobs at {address}")
    t.add_column("submission id", no_wrap=True)
    for col in ("status", "started", "entrypoint"):
        t.add_column(col)
    for r in rows:
        started = _fmt_time(r["start_time"])
        t.add_row(r["submission_id"], r["status"], started, r["entrypoint"])
    console.print(t)


def _fmt_time(ms: int | None) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S") if ms else ""


@jobs_app.command("status")
def status(
    submission_id: str = typer.Argument(..., help="submission id printed by aimctl submit"),
    address: str = typer.Option(None, "--address", envvar=ADDRESS_ENV, help=ADDRESS_HELP),
) -> None:
    """One job's status and message (JSON)."""
    from pipelines.submit import redact

    address = _address(address)
    try:
        j = _client_or_fail(address).get_job_info(submission_id)
    except typer.Exit:
        raise
    except RuntimeError as e:
        fail(redact(str(e).splitlines()[0]), code=1)
    print(
        json.dumps(
            {
                "submission_id": j.submission_id,
                "status": str(j.status.value),
                "entrypoint": redact(j.entrypoint or ""),
                "message": redact(j.message or ""),
                "metadata": j.metadata,
                "start_time": j.start_time,
                "end_time": j.end_time,
            }
        )
    )


@jobs_app.command("logs")
def logs(
    submission_id: str = typer.Argument(..., help="submission id printed by aimctl submit"),
    address: str = typer.Option(None, "--address", envvar=ADDRESS_ENV, help=ADDRESS_HELP),
    follow: bool = typer.Option(False, "--follow", "-f", help="stream until the job ends; exit 1 unless it succeeded"),
) -> None:
    """A job's logs (credential values from your environment are masked)."""
    from pipelines.submit import redact

    address = _address(address)
    if follow:
        _follow_and_exit(address, submission_id)
        return
    try:
        print(redact(_client_or_fail(address).get_job_logs(submission_id)), end="")
    except typer.Exit:
        raise
    except RuntimeError as e:
        fail(redact(str(e).splitlines()[0]), code=1)


@jobs_app.command("stop")
def stop(
    submission_id: str = typer.Argument(..., help="submission id printed by aimctl submit"),
    address: str = typer.Option(None, "--address", envvar=ADDRESS_ENV, help=ADDRESS_HELP),
    wait_s: float = typer.Option(30.0, "--wait", help="seconds to wait for it to stop (0: don't wait)"),
) -> None:
    """Stop a running job (pretrain resumes from its last checkpoint when submitted again)."""
    from pipelines.submit import redact, wait

    address = _address(address)
    c = _client_or_fail(address)
    try:
        stopped = c.stop_job(submission_id)
    except typer.Exit:
        raise
    except RuntimeError as e:
        fail(redact(str(e).splitlines()[0]), code=1)
    if not stopped:
        console.print(f"{submission_id} was not running ({c.get_job_status(submission_id).value})", highlight=False)
        return
    final = wait(address, submission_id, timeout_s=wait_s, c=c) if wait_s > 0 else "STOPPING"
    console.print(f"[yellow]{submission_id}: {final}[/]", highlight=False)
