"""`rtml aggregate` (the engine) and `rtml features show` (the minutes it produced); also the
Spark job's entry point for `spark-submit` (`spark_main`), a composition root like the CLI: the
engines get their sinks here, from `rtml.pipeline.minute_sinks`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated

import typer


def _utc(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def register(app: typer.Typer) -> None:
    @app.command()
    def aggregate(
        drain: Annotated[
            bool, typer.Option("--drain", help="Process everything in the stream, close all windows, exit.")
        ] = False,
        engine: Annotated[str, typer.Option(help="embedded (default) or spark.")] = "embedded",
        batch: Annotated[
            int, typer.Option(min=1, help="Events read and committed per transaction (embedded).")
        ] = 50_000,
        checkpoint: Annotated[
            str | None,
            typer.Option(help="Spark checkpoint path or URI (spark; default <data_dir>/spark/checkpoint)."),
        ] = None,
        master: Annotated[
            str | None, typer.Option(help="Spark master (spark; default local[2], or spark-submit's).")
        ] = None,
    ) -> None:
        """Turn the stream into per-minute features (live until SIGTERM/SIGINT, or --drain)."""
        from rtml.config import get_settings
        from rtml.pipeline import minute_sinks

        settings = get_settings()
        if engine == "spark":
            from rtml.aggregate.spark_job import run_command

            sinks = minute_sinks(settings)
            run_command(settings, sinks=sinks, drain=drain, checkpoint=checkpoint, master=master)
            return
        if engine != "embedded":
            raise typer.BadParameter("must be 'embedded' or 'spark'", param_hint="--engine")
        from rich.console import Console

        from rtml.aggregate.embedded import EngineError, Progress, aggregate_counters, run
        from rtml.pipeline import stream_reset_recorder

        on_reset = stream_reset_recorder(settings)

        console = Console(stderr=True)
        done = 0
        try:
            if not drain:
                console.print("aggregating live; stop with Ctrl-C or SIGTERM")
                run(settings, drain=False, batch=batch, sinks=lambda: minute_sinks(settings, live=True), on_reset=on_reset)
                return
            with console.status("aggregating") as status:

                def show(p: Progress) -> None:
                    nonlocal done
                    done += p.events
                    status.update(f"aggregating: {done:,} events")

                sinks = minute_sinks(settings)
                emitted = run(settings, drain=True, on_progress=show, batch=batch, sinks=sinks, on_reset=on_reset)
        except EngineError as exc:
            console.print(f"[red]{exc}")
            raise typer.Exit(1) from None
        c = aggregate_counters(settings)
        console.print(
            f"{done:,} events, {emitted:,} minute rows emitted; totals: {int(c['events_in']):,} events in, "
            f"{int(c['late'])} late, {int(c['duplicates'])} duplicates dropped"
        )

    features = typer.Typer(help="Per-minute features.", no_args_is_help=True)
    app.add_typer(features, name="features")

    @features.command("show")
    def show(
        last: Annotated[int | None, typer.Option("--last", help="The last N minutes.")] = None,
        start: Annotated[
            str | None, typer.Option("--start", help="First minute, ISO-8601 (UTC if no zone).")
        ] = None,
        end: Annotated[str | None, typer.Option("--end", help="End (exclusive), ISO-8601.")] = None,
        fmt: Annotated[str, typer.Option("--format", help="table, csv or json.")] = "table",
    ) -> None:
        """Print MinuteFeatures: minute,tx_count,fee_total_sat,fee_avg_sat,event_time,revision."""
        if fmt not in ("table", "csv", "json"):
            raise typer.BadParameter("must be table, csv or json", param_hint="--format")
        if last is not None and (start is not None or end is not None):
            raise typer.BadParameter("give either --last or --start/--end", param_hint="--last")
        from rtml.config import get_settings
        from rtml.contracts import MinuteFeatures
        from rtml.features.offline import read_feature_minutes  # the feature store, else the engine

        try:
            low = _utc(start) if start else None
            high = _utc(end) if end else None
        except ValueError as exc:
            raise typer.BadParameter(f"not an ISO-8601 time: {exc}") from None
        rows = read_feature_minutes(get_settings(), low, high)
        if last is not None:
            rows = rows[-last:] if last > 0 else []
        cells = [
            [
                _iso(r.minute),
                str(r.tx_count),
                str(r.fee_total_sat),
                "" if r.fee_avg_sat is None else repr(r.fee_avg_sat),
                _iso(r.event_time),
                str(r.revision),
            ]
            for r in rows
        ]
        columns = MinuteFeatures.COLUMNS
        if fmt == "csv":
            import csv
            import sys

            writer = csv.writer(sys.stdout, lineterminator="\n")
            writer.writerow(columns)
            writer.writerows(cells)
        elif fmt == "json":
            import json

            records = [
                {
                    "minute": c[0],
                    "tx_count": r.tx_count,
                    "fee_total_sat": r.fee_total_sat,
                    "fee_avg_sat": r.fee_avg_sat,
                    "event_time": c[4],
                    "revision": r.revision,
                }
                for c, r in zip(cells, rows, strict=True)
            ]
            typer.echo(json.dumps(records, indent=1))
        else:
            from rich.console import Console
            from rich.table import Table

            table = Table(*columns)
            for c in cells:
                table.add_row(*c)
            console = Console()
            # Piped output has no terminal width to fit: keep every cell whole.
            Console(width=max(console.width, 120)).print(table)


def spark_main(argv: Sequence[str] | None = None) -> None:
    """Entry point for `spark-submit` (and `python -m rtml.aggregate.commands`)."""
    from rtml.aggregate.spark_job import run_command
    from rtml.config import get_settings
    from rtml.pipeline import minute_sinks

    parser = argparse.ArgumentParser(description="rtml aggregation as a Spark Structured Streaming job")
    parser.add_argument(
        "--drain", action="store_true", help="process what the stream holds, close all windows, exit"
    )
    parser.add_argument(
        "--checkpoint", default=None, help="checkpoint path or URI (default <data_dir>/spark/checkpoint)"
    )
    parser.add_argument(
        "--master", default=None, help="Spark master (default: spark-submit's, else local[2])"
    )
    parser.add_argument("--trigger-seconds", type=float, default=1.0)
    parser.add_argument("--max-rows-per-batch", type=int, default=100_000)
    args = parser.parse_args(argv)
    settings = get_settings()
    run_command(
        settings,
        sinks=minute_sinks(settings),
        drain=args.drain,
        checkpoint=args.checkpoint,
        master=args.master,
        trigger_s=args.trigger_seconds,
        max_rows_per_batch=args.max_rows_per_batch,
    )


if __name__ == "__main__":
    spark_main()
