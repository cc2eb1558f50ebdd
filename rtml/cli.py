"""The `rtml` command line. Each part registers its commands from its own `commands.py`.

Command modules import only Typer and the standard library at module level; heavy libraries
(pandas, Feast, Evidently, MLflow, Spark) are imported inside the command that needs them,
so `rtml --help` stays fast.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from rtml import commands
from rtml.aggregate import commands as aggregate_commands
from rtml.commands import exit_if_settings_refused
from rtml.features import commands as features_commands
from rtml.model import commands as model_commands
from rtml.monitoring import commands as monitoring_commands
from rtml.ops import commands as ops_commands
from rtml.quality import commands as quality_commands
from rtml.serving import commands as serving_commands
from rtml.sources import commands as sources_commands

app = typer.Typer(
    name="rtml",
    help="Realtime MLOps pipeline for Bitcoin fees: ingest, aggregate, features, drift, train, serve, monitor.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

# One per part of the data flow; each module defines `register(app)`.
COMMAND_MODULES = (
    commands,
    ops_commands,
    serving_commands,
    aggregate_commands,
    quality_commands,
    features_commands,
    sources_commands,
    model_commands,
    monitoring_commands,
)


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
    # Every component reports outages (rtml.outage) as events: the event log, once imported, takes them.
    import rtml.monitoring.events  # noqa: F401


for _module in COMMAND_MODULES:
    _module.register(app)
