"""`rtml train` and `rtml model list | promote VERSION | rollback`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

model_app = typer.Typer(
    help="The model registry: list versions, promote one to champion, roll back.", no_args_is_help=True
)


def _utc(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"not an ISO time: {value!r} (e.g. 2024-10-01T00:00Z)") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def register(app: typer.Typer) -> None:
    @app.command()
    def train(
        start: Annotated[
            str | None, typer.Option(help="First minute to train on (ISO, UTC); default: all.")
        ] = None,
        end: Annotated[str | None, typer.Option(help="Train on minutes before this time (ISO, UTC).")] = None,
    ) -> None:
        """Train P10/P50/P90 fee models, backtest them against the baselines, register, gate."""
        from rich.console import Console
        from rich.table import Table

        from rtml.config import get_settings
        from rtml.model.train import train as run_training

        console = Console()
        settings = get_settings()
        try:
            result = run_training(settings, _utc(start), _utc(end), console=console)
        except ValueError as exc:
            console.print(f"[red]cannot train:[/] {exc}")
            raise typer.Exit(1) from None
        folds = result.backtest.folds
        table = Table(
            title=f"Backtest: {len(folds)} folds, {result.rows:,} rows "
            f"{result.train_start:%Y-%m-%d %H:%M} .. {result.train_end:%Y-%m-%d %H:%M} UTC"
        )
        for column in ("forecaster", "wQL", "MAE P50", "P10–P90 coverage"):
            table.add_column(column, justify="left" if column == "forecaster" else "right")
        for name, m in sorted(result.backtest.summary.items(), key=lambda kv: kv[1].wql):
            table.add_row(name, f"{m.wql:.4f}", f"{m.mae:,.0f}", f"{m.coverage:.1%}")
        for name, why in result.backtest.skipped.items():
            table.add_row(f"[dim]{name}", "[dim]skipped", "", f"[dim]{why}")
        console.print(table)
        for reason in result.decision.reasons:
            console.print(f"  - {reason}")
        console.print(
            f"[{'green' if result.promoted else 'yellow'}]{result.line()}[/] ({result.seconds:.1f} s)"
        )

    @model_app.command("list")
    def list_models() -> None:
        """Every registered version of fee_forecaster, newest first; * marks the champion."""
        from rich.console import Console
        from rich.table import Table

        from rtml.config import get_settings
        from rtml.model.registry import list_versions

        table = Table(title="fee_forecaster")
        for column in ("version", "champion", "kind", "trained on (UTC)", "wQL", "best baseline wQL", "gate"):
            table.add_column(column)
        for v in list_versions(get_settings()):
            m = v["metrics"]
            window = f"{(v['train_start'] or '?')[:16]} .. {(v['train_end'] or '?')[:16]}"
            table.add_row(
                v["version"],
                "*" if v["champion"] else "",
                v["kind"] if v["kind"] == "model" else f"baseline ({v['baseline']})",
                window,
                f"{m['wql']:.4f}" if "wql" in m else "",
                f"{m['best_baseline_wql']:.4f}" if "best_baseline_wql" in m else "",
                v["gate"] or "",
            )
        Console().print(table)

    @model_app.command()
    def promote(version: Annotated[str, typer.Argument(help="Registered version to make champion.")]) -> None:
        """Point the champion alias at VERSION (recorded as a manual promotion)."""
        from mlflow.exceptions import MlflowException

        from rtml.config import get_settings
        from rtml.model.registry import promote as do_promote

        try:
            do_promote(get_settings(), version, reason="manual (rtml model promote)")
        except MlflowException as exc:
            typer.echo(f"cannot promote version {version}: {exc.message}", err=True)
            raise typer.Exit(1) from None
        typer.echo(f"champion -> version {version}")

    @model_app.command()
    def rollback() -> None:
        """Move the champion alias back to the previous champion."""
        from rtml.config import get_settings
        from rtml.model.registry import rollback as do_rollback

        try:
            version = do_rollback(get_settings())
        except LookupError as exc:
            typer.echo(f"cannot roll back: {exc}", err=True)
            raise typer.Exit(1) from None
        typer.echo(f"champion -> version {version} (rolled back)")

    app.add_typer(model_app, name="model")
