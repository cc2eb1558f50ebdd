"""`rtml up`, `rtml status`, `rtml down [--purge]`: deploy and destroy the whole pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def up(
        profile: Annotated[
            str | None, typer.Option("--profile", help="embedded or services (default: from settings).")
        ] = None,
        source: Annotated[str, typer.Option("--source", help="ws, rest, replay or synthetic.")] = "ws",
        file: Annotated[Path | None, typer.Option("--file", help="Replay file (--source replay).")] = None,
        speed: Annotated[str, typer.Option("--speed", help="Replay speed factor or max.")] = "1",
        port: Annotated[int | None, typer.Option("--port", help="API port (default: settings).")] = None,
        timeout: Annotated[float, typer.Option(help="Seconds to wait for every component to be ready.")] = 180,
    ) -> None:
        """Start ingestion, aggregation, archiver, serving and the scheduler as supervised processes."""
        import os

        from rtml.commands import exit_if_settings_refused
        from rtml.ops.deploy import bring_up

        if profile is not None:
            os.environ["RTML_PROFILE"] = profile
            exit_if_settings_refused()

        raise typer.Exit(bring_up(profile, source, file, speed, port, timeout))

    @app.command()
    def status(json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
        """Each component's state, pid, uptime and restarts; stream lag, freshness, champion, drift."""
        from rtml.ops.deploy import show_status

        show_status(json_out)

    @app.command()
    def down(
        purge: Annotated[bool, typer.Option("--purge", help="Also delete every piece of state.")] = False,
        yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    ) -> None:
        """Stop everything cleanly; with --purge also delete files, Redis keys, tables and runs."""
        from rtml.ops.deploy import bring_down

        raise typer.Exit(bring_down(purge, yes))

    @app.command(hidden=True)
    def archiver(interval: Annotated[float, typer.Option(help="Seconds between archive passes.")] = 5.0) -> None:
        """Keep the Parquet archive up to date with the stream (started by `rtml up`)."""
        from rtml.ops.scheduler import run_archiver

        run_archiver(interval)

    @app.command(hidden=True)
    def scheduler() -> None:
        """The periodic jobs of a running pipeline (started by `rtml up`)."""
        from rtml.ops.scheduler import run_scheduler
        from rtml.pipeline import pipeline_scheduler

        run_scheduler(pipeline_scheduler)
