"""The `rtml` command line. Each part registers its commands from its own `commands.py`.

Command modules import only Typer and the standard library at module level; heavy libraries
(pandas, Feast, Evidently, MLflow, Spark) are imported inside the command that needs them,
so `rtml --help` stays fast.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="rtml",
    help="Realtime MLOps pipeline for Bitcoin fees: ingest, aggregate, features, drift, train, serve, monitor.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

# One line per part of the data flow; each module defines `register(app)`.
COMMAND_MODULES = ("rtml.commands", "rtml.ops.commands", "rtml.serving.commands", "rtml.aggregate.commands", "rtml.quality.commands", "rtml.features.commands", "rtml.sources.commands", "rtml.model.commands", "rtml.monitoring.commands")


@app.callback()
def main(
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", envvar="RTML_DATA_DIR", help="Where all state lives.")
    ] = None,
    profile: Annotated[
        str | None, typer.Option("--profile", envvar="RTML_PROFILE", help="embedded (default) or services.")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", envvar="RTML_CONFIG", help="Settings file (default ./rtml.toml)."),
    ] = None,
) -> None:
    """Options given here reach every component, child processes included, through RTML_ variables."""
    if data_dir is not None:
        os.environ["RTML_DATA_DIR"] = str(data_dir)
    if profile is not None:
        if profile not in ("embedded", "services"):
            raise typer.BadParameter("must be 'embedded' or 'services'", param_hint="--profile")
        os.environ["RTML_PROFILE"] = profile
    if config is not None:
        os.environ["RTML_CONFIG"] = str(config)
    exit_if_settings_refused()


def exit_if_settings_refused() -> None:
    """A refused setting ends the command with its reason and exit 2, before anything runs."""
    from rtml.config import settings_problem

    problem = settings_problem()
    if problem is not None:
        typer.echo(f"rtml: {problem}", err=True)
        raise typer.Exit(2)


for _module in COMMAND_MODULES:
    importlib.import_module(_module).register(app)
