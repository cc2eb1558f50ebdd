"""`rtml dataset build`: a point-in-time correct training set from the feature store."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer


def _utc(value: str, name: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise typer.BadParameter(f"not an ISO-8601 time: {exc}", param_hint=name) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def register(app: typer.Typer) -> None:
    dataset = typer.Typer(help="Training sets built from the feature store.", no_args_is_help=True)
    app.add_typer(dataset, name="dataset")

    @dataset.command("build")
    def build(
        start: Annotated[str, typer.Option("--start", help="First as-of time, ISO-8601 (UTC if no zone).")],
        end: Annotated[str, typer.Option("--end", help="Last as-of time (inclusive), ISO-8601.")],
        horizon: Annotated[
            int, typer.Option("--horizon", min=1, help="Label = fee_avg_sat this many minutes ahead.")
        ] = 5,
        out: Annotated[
            Path | None, typer.Option("--out", help="Parquet file (default <data_dir>/datasets/...).")
        ] = None,
    ) -> None:
        """Rows at each as-of minute: features known then, label fee_avg_sat at +horizon; Parquet + data card."""
        low, high = _utc(start, "--start"), _utc(end, "--end")
        if high < low:
            raise typer.BadParameter("--end is before --start", param_hint="--end")
        from rich.console import Console

        from rtml.config import get_settings
        from rtml.features.etl import build_dataset

        console = Console(stderr=True)
        with console.status("opening the feature store"):
            from rtml.features.feast_repo import ensure_repo

            settings = get_settings()
            store = ensure_repo(settings)
        with console.status("point-in-time join and features"):
            card = build_dataset(settings, low, high, horizon=horizon, out=out, store=store)
        missing = card["missing_minutes"]
        console.print(
            f"{card['rows']:,} rows, as-of {card['span']['first_asof']} .. {card['span']['last_asof']}, "
            f"{missing['count']} missing minutes between the first and last stored"
        )
        typer.echo(card["path"])
        typer.echo(card["card_path"])
