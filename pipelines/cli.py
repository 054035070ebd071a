"""`aimctl`: the one command-line entry point (typer + rich).

Sub-command groups live in their own modules (``pipelines/cli_*.py``) and are registered here.
Heavy imports (ray, mlflow, torch) happen inside the commands so ``aimctl --help`` stays fast.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="aimctl",
    help="AIM pre-training pipeline: data (Ray Data), pre-training (Ray Train), sweeps (Ray Tune), MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


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
