"""`rtml drift` and `rtml quality`: the hourly checks, on demand."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from rtml.quality.results import DriftResult, TimeRange

WINDOW_HELP = "START..END, ISO 8601 times (UTC when no offset), e.g. 2024-10-01T00:00..2024-10-02T00:00."


def parse_window(text: str | None) -> TimeRange | None:
    """`START..END` -> TimeRange; times without an offset are UTC."""
    from rtml.quality.results import TimeRange

    if text is None:
        return None
    start_text, sep, end_text = text.partition("..")
    try:
        if not sep:
            raise ValueError("missing '..'")
        start, end = (datetime.fromisoformat(t.strip()) for t in (start_text, end_text))
    except ValueError as exc:
        raise typer.BadParameter(f"{text!r}: {exc}; expected {WINDOW_HELP}") from None
    start, end = (t if t.tzinfo else t.replace(tzinfo=UTC) for t in (start, end))
    if end <= start:
        raise typer.BadParameter(f"{text!r}: END must be after START")
    return TimeRange(start.astimezone(UTC), end.astimezone(UTC))


def _print(result: DriftResult, drift: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if drift and result.columns:
        table = Table(title=f"drift: reference {result.reference}, current {result.current}")
        for name in ("column", "method", "statistic", "threshold", "verdict"):
            table.add_column(name)
        for c in result.columns:
            table.add_row(c.column, c.method, f"{c.statistic:.4g}", f"{c.threshold:.4g}",
                          "[red]drift" if c.drifted else "[green]ok")  # fmt: skip
        console.print(table)
    rules = Table(title="data-quality rules")
    for name in ("rule", "status", "value", "threshold", "detail"):
        rules.add_column(name)
    style = {"pass": "[green]", "fail": "[red]", "skipped": "[dim]"}
    for r in result.rules:
        value = "" if r.value is None else f"{r.value:.4g}"
        rules.add_row(r.name, style[r.status] + r.status, value, r.threshold, r.detail)
    console.print(rules)
    if drift:
        console.print(
            f"[bold]drift verdict: {result.verdict}[/] ({result.share:.0%} of {len(result.columns)} columns, "
            f"alert at {result.drift_share:.0%})"
        )
    console.print(f"report: {result.html_path}\nsummary: {result.json_path}")


def register(app: typer.Typer) -> None:
    @app.command()
    def drift(
        reference: Annotated[
            str | None,
            typer.Option(
                help="Reference period; default the champion's training window, else the first day. "
                + WINDOW_HELP
            ),
        ] = None,
        current: Annotated[
            str | None, typer.Option(help="Current period; default the last hour. " + WINDOW_HELP)
        ] = None,
    ) -> None:
        """Drift of the per-minute features and per-transaction fees/sizes, plus the data-quality rules."""
        from rtml.config import get_settings
        from rtml.quality.drift import run_drift_check

        ref, cur = parse_window(reference), parse_window(current)
        _print(run_drift_check(get_settings(), ref, cur), drift=True)

    @app.command()
    def quality(
        current: Annotated[
            str | None, typer.Option(help="Period to check; default the last hour. " + WINDOW_HELP)
        ] = None,
    ) -> None:
        """The data-quality rules alone (no drift), with a report."""
        from rtml.config import get_settings
        from rtml.quality.drift import run_quality_check

        _print(run_quality_check(get_settings(), parse_window(current)), drift=False)
