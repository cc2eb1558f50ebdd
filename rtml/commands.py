"""Commands that belong to no single part (`demo`, `config`), and the settings check every command runs first."""

from __future__ import annotations

from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        hours: Annotated[
            float, typer.Option(help="Hours of synthetic traffic to run through the pipeline.")
        ] = 36,
        seed: Annotated[int, typer.Option(help="Seed of the synthetic source.")] = 7,
        serve: Annotated[bool, typer.Option("--serve", help="Keep the pipeline serving after the summary, until Ctrl-C.")] = False,
    ) -> None:
        """`rtml up` on compressed time: a synthetic replay with a fee regime shift, then what the pipeline did."""
        from rtml.demo import run_demo

        run_demo(hours=hours, seed=seed, serve=serve)

    @app.command("config")
    def show_config(
        show_secrets: Annotated[
            bool, typer.Option("--show-secrets", help="Print tokens and passwords instead of ***.")
        ] = False,
    ) -> None:
        """Print the effective settings (file + RTML_ variables), as TOML; secrets as ***."""
        import tomli_w
        from rich.console import Console
        from rich.syntax import Syntax

        from rtml.config import get_settings, mask_secrets

        settings = get_settings()
        data = settings.model_dump(mode="json", exclude_none=True)
        if not show_secrets:
            for key in ("redis_url", "postgres_dsn"):
                data[key] = mask_secrets(data[key])
            if "admin_token" in data["serving"]:
                data["serving"]["admin_token"] = "***"
        Console().print(Syntax(tomli_w.dumps(data), "toml"))


def exit_if_settings_refused() -> None:
    """A refused setting ends the command with its reason and exit 2, before anything runs."""
    from rtml.config import settings_problem

    problem = settings_problem()
    if problem is not None:
        typer.echo(f"rtml: {problem}", err=True)
        raise typer.Exit(2)
