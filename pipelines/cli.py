"""`aimctl`: the one command-line entry point (typer + rich).

Sub-command groups live in their own modules (``pipelines/cli_*.py``) and are registered here.
Heavy imports (ray, mlflow, torch) happen inside the commands so ``aimctl --help`` stays fast.
"""

from __future__ import annotations

import typer
from typer.core import TyperGroup


class _OneLineErrors(TyperGroup):
    """The error boundary of every command: a user error (bad data, storage, config, training) that a
    command did not handle itself prints one line and exits 1. Anything else (a bug) prints one line too,
    its traceback going to the command's log file; with -v (no log file) the traceback is printed as is."""

    def invoke(self, ctx):
        import click

        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise  # a command's own exit (its error line is already printed) or a usage error
        except Exception as e:
            from pipelines.cli_common import fail, user_error

            msg = user_error(e)
            if msg is None:
                msg = _unexpected(e)
                if msg is None:
                    raise
            fail(msg + _log_hint(), code=1)


def _unexpected(e: Exception) -> str | None:
    """One line for an unexpected error, its traceback appended to the log file; None without a log file."""
    import traceback

    from pipelines import quiet

    path = quiet.log_path()
    if path is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write("aimctl: unexpected error\n" + "".join(traceback.format_exception(e)))
    return f"unexpected {type(e).__name__}: {e} (a bug: please report it with the traceback in the log; -v prints it)"


def _log_hint() -> str:
    from pipelines import quiet

    path = quiet.log_path()
    return f" (log: {path})" if path is not None and path.exists() else ""


app = typer.Typer(
    name="aimctl",
    cls=_OneLineErrors,
    help="AIM pre-training pipeline: data (Ray Data), pre-training (Ray Train), sweeps (Ray Tune), MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def _main(
    ctx: typer.Context,
    verbose: bool = typer.Option(False, "-v", "--verbose", help="show Ray's INFO logging and workers' output"),
) -> None:
    """Without -v, Ray's INFO logging goes to a log file ($AIMCTL_LOG_DIR, default <tmp>/aimctl/)."""
    from pipelines import quiet

    if not verbose:
        quiet.enable()
        ctx.call_on_close(quiet.disable)  # for this command only (matters when called in-process, e.g. tests)


def _register() -> None:
    from pipelines import cli_data, cli_model, cli_sweep, cli_train

    app.add_typer(cli_model.app, name="model")
    app.add_typer(cli_data.app, name="data")
    app.command("pretrain")(cli_train.pretrain)
    app.command("probe")(cli_train.probe)
    app.command("sweep")(cli_sweep.sweep)
    app.command("report")(cli_sweep.report)
    from pipelines import cli_submit

    app.command("submit", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(
        cli_submit.submit
    )
    app.add_typer(cli_submit.jobs_app, name="jobs")


_register()

if __name__ == "__main__":  # pragma: no cover
    app()
