"""`rtml serve`: the forecast API under uvicorn."""

from __future__ import annotations

from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        host: Annotated[
            str | None, typer.Option(help="Address to bind (default serving.host, 127.0.0.1).")
        ] = None,
        port: Annotated[int | None, typer.Option(help="Port (default serving.port, 8000).")] = None,
    ) -> None:
        """Serve forecasts of the champion model over HTTP (OpenAPI at /docs)."""
        import uvicorn

        from rtml.config import get_settings
        from rtml.pipeline import serving_app

        settings = get_settings()
        host = host or settings.serving.host
        port = settings.serving.port if port is None else port
        typer.echo(f"rtml forecast API on http://{host}:{port} (docs at /docs)")
        uvicorn.run(serving_app(settings), host=host, port=port, log_level="warning", access_log=False)
