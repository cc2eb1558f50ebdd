"""`rtml monitor` (one pass of the monitoring and retraining loop, or a loop) and `rtml events`."""

from __future__ import annotations

from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def monitor(
        loop: Annotated[bool, typer.Option("--loop", help="Keep running a pass every --interval seconds.")] = False,
        interval: Annotated[float, typer.Option(help="Seconds between passes with --loop.", min=1)] = 60.0,
        json_out: Annotated[bool, typer.Option("--json", help="Print the pass report as JSON.")] = False,
    ) -> None:
        """Judge closed hours of forecasts (wQL, MAE, coverage), raise breaches and alarms, retrain when due."""
        import json
        from dataclasses import asdict

        from rich.console import Console

        from rtml.config import get_settings
        from rtml.monitoring.loop import run_loop, run_monitoring_pass

        settings = get_settings()
        if loop:
            import signal
            import threading

            stop = threading.Event()
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: stop.set())
            run_loop(settings, interval, stop)  # a pass in progress finishes, then the loop ends
            return
        report = run_monitoring_pass(settings)
        if json_out:
            typer.echo(json.dumps(asdict(report), default=str))
            return
        console = Console()
        threshold = settings.monitoring.wql_threshold
        for hour in report.judged:
            mark = "[red]breach[/]" if hour["breach"] else "[green]ok[/]"
            console.print(
                f"{hour['hour']}  wQL {hour['wql']:.3f} (threshold {threshold})  n={hour['n']}  "
                f"model {hour['model_version']}  {mark}"
            )
        if not report.judged:
            console.print("no newly closed hour with enough forecasts to judge")
        if report.alarm:
            console.print("[bold red]alarm[/]: consecutive breaches reached the limit")
        if report.trigger:
            console.print(f"retrained ({report.trigger}): {report.outcome}")

    @app.command()
    def events(
        limit: Annotated[int, typer.Option(help="How many of the newest events.", min=1)] = 50,
        prefix: Annotated[str, typer.Option(help="Only kinds starting with this, e.g. 'drift.' or 'model.'.")] = "",
        json_out: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    ) -> None:
        """Print the pipeline's event log (drift, breaches, alarms, retraining, gate, promotions), oldest first."""
        import json
        from datetime import UTC, datetime

        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        from rtml.config import get_settings
        from rtml.contracts import printable
        from rtml.monitoring.events import open_event_log

        log = open_event_log(get_settings())
        try:
            found = log.recent(limit=limit, prefix=prefix)
        finally:
            log.close()
        if json_out:
            for e in found:
                typer.echo(json.dumps({"id": e.id, "time_ms": e.time_ms, "kind": e.kind, "details": e.details}))
            return
        table = Table("id", "time (UTC)", "kind", "details")
        for e in found:
            when = datetime.fromtimestamp(e.time_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
            details = "  ".join(f"{k}={v}" for k, v in e.details.items())
            # Details may quote refused input: printed literally (no markup), control characters escaped.
            table.add_row(str(e.id), when, Text(printable(e.kind)), Text(printable(details)))
        Console().print(table)
