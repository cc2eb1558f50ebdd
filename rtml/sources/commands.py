"""`rtml ingest`, `rtml dlq show` and `rtml archive`: the ingestion part's commands, and
`run_ingest`, which wires a source (`rtml.sources.factory`), the ingestion pipeline and the
archiver beside it."""

from __future__ import annotations

import signal
import threading
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from rtml.config import Settings
    from rtml.sources.ingest import Counts

# The archiver runs beside a long ingestion this often (seconds).
ARCHIVE_EVERY_S = 60.0


class SourceKind(StrEnum):
    ws = "ws"
    rest = "rest"
    replay = "replay"
    synthetic = "synthetic"


def register(app: typer.Typer) -> None:
    @app.command()
    def ingest(
        source: Annotated[SourceKind, typer.Option(help="Where transactions come from.")] = SourceKind.ws,
        file: Annotated[
            Path | None,
            typer.Option("--file", help="JSONL or JSONL.gz of utx frames or TxEvent rows (replay)."),
        ] = None,
        speed: Annotated[
            str, typer.Option(help="Replay/synthetic pace: 1 = real time, 60 = a minute a second, max.")
        ] = "1",
        duration: Annotated[
            float | None,
            typer.Option("--duration", help="Stop after this many seconds (default: until done / Ctrl-C)."),
        ] = None,
        ws_url: Annotated[
            str | None, typer.Option("--ws-url", help="Websocket URL (default from settings).")
        ] = None,
        rest_url: Annotated[
            str | None,
            typer.Option("--rest-url", help="unconfirmed-transactions URL (default from settings)."),
        ] = None,
        archive: Annotated[bool, typer.Option(help="Also write the Parquet archive.")] = True,
    ) -> None:
        """Ingest transactions: parse, validate, dedup, append to the stream (and archive); print the counters."""
        from rich.console import Console

        from rtml.config import get_settings
        from rtml.sources.replay import parse_speed

        console = Console()
        try:
            pace = parse_speed(speed)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--speed") from None
        if source is SourceKind.replay and file is None:
            raise typer.BadParameter("--source replay needs --file", param_hint="--file")
        if file is not None and not file.exists():
            raise typer.BadParameter(f"{file} does not exist", param_hint="--file")
        stop = threading.Event()
        # Ctrl-C or SIGTERM (the supervisor) ends the run cleanly: last batch, archive, counters.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        run_ingest(
            get_settings(),
            source.value,
            file=file,
            speed=pace,
            duration_s=duration,
            ws_url=ws_url,
            rest_url=rest_url,
            archive=archive,
            stop=stop,
            console=console,
        )

    dlq = typer.Typer(
        help="The dead-letter store: input that was refused, with the reason.", no_args_is_help=True
    )
    app.add_typer(dlq, name="dlq")

    @dlq.command("show")
    def dlq_show(
        limit: Annotated[int, typer.Option(help="How many of the most recent to show.")] = 20,
        source: Annotated[str | None, typer.Option(help="Only this source (ws, rest, replay, ...).")] = None,
    ) -> None:
        """Show the most recent dead letters and how many there are."""
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        from rtml.config import get_settings
        from rtml.contracts import ms_to_datetime, printable
        from rtml.sources.deadletters import open_ingest_store

        with open_ingest_store(get_settings()) as store:
            letters = store.dead_letters(limit, source)
            total = store.dead_letter_count()
        table = Table(title=f"dead letters: {total:,} in total, {len(letters)} most recent")
        for column in ("time (UTC)", "source", "reason", "raw"):
            table.add_column(column, overflow="fold")
        table.add_column("bytes", justify="right")
        table.add_column("sha256", overflow="fold")
        table.add_column("clock (UTC)")  # the ingest event clock it ages by (retention)
        for d in letters:
            # Refused text is shown literally (rich Text: no markup) with control characters escaped.
            raw = printable(d.raw[:200]) + (f"... ({len(d.raw):,} chars kept)" if len(d.raw) > 200 else "")
            table.add_row(
                f"{ms_to_datetime(d.ingest_time):%Y-%m-%d %H:%M:%S}",
                Text(printable(d.source)),
                Text(printable(d.reason)),
                Text(raw),
                f"{d.raw_bytes:,}" if d.raw_bytes >= 0 else "",
                d.raw_sha256[:16],
                f"{ms_to_datetime(d.clock):%Y-%m-%d %H:%M}" if d.clock >= 0 else "",
            )
        Console().print(table)

    @app.command("archive")
    def archive_cmd(
        compact_all: Annotated[
            bool, typer.Option("--compact/--no-compact", help="Merge small files per hour.")
        ] = True,
    ) -> None:
        """Bring the Parquet archive up to date with the stream and compact it."""
        from rich.console import Console

        from rtml.archive.parquet_lake import archive_files, archive_pending, compact
        from rtml.config import get_settings

        settings = get_settings()
        added = archive_pending(settings)
        folders = compact(settings) if compact_all else 0
        Console().print(
            f"archived {added:,} events; compacted {folders} hour folders; {len(archive_files(settings))} files"
        )


def run_ingest(
    settings: Settings,
    source: str,
    *,
    file: Path | None = None,
    speed: float | None = 1.0,
    duration_s: float | None = None,
    ws_url: str | None = None,
    rest_url: str | None = None,
    archive: bool = True,
    stop: threading.Event | None = None,
    console: Console | None = None,
) -> Counts:
    """Run one source (`ws`, `rest`, `replay`, `synthetic`) through the pipeline until it ends,
    `duration_s` passes or `stop` is set; keep the archive up to date beside it; print the counters."""
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from rtml.archive.parquet_lake import archive_pending, compact
    from rtml.sources.base import SourceOptions
    from rtml.sources.factory import open_source
    from rtml.sources.ingest import Ingestor, ingest_counters

    options = SourceOptions(file=file, speed=speed, duration_s=duration_s, ws_url=ws_url, rest_url=rest_url)
    feed = open_source(settings, source, options)
    console = console or Console()
    stop = stop or threading.Event()
    finished = threading.Event()
    live_note = ""

    def archiver() -> None:
        while not finished.wait(ARCHIVE_EVERY_S):
            archive_pending(settings)

    side = threading.Thread(target=archiver, daemon=True, name="archiver")
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Ingestor(settings) as ingestor, Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(f"ingesting from {source}")

        def show() -> None:
            t = ingestor.totals
            progress.update(
                task,
                description=f"{source}: {t.received:,} received, {t.valid:,} valid, "
                f"{t.duplicates:,} duplicates, {t.dead_letters:,} dead letters",
            )

        ingestor.on_batch = show
        if archive:
            side.start()
        try:
            live_note = feed.run(ingestor, stop)
        finally:
            feed.close()
            finished.set()
            if archive:
                side.join()
                progress.update(task, description="archiving")
                archive_pending(settings)
                compact(settings)
        totals = ingestor.totals
    _print_counters(console, source, totals, ingest_counters(settings), live_note)
    return totals


def _print_counters(console: Console, source: str, run: Counts, total: dict[str, float], note: str) -> None:
    from rich.table import Table

    from rtml.sources.deadletters import COUNTERS

    table = Table(title=f"ingest from {source}" + (f" ({note})" if note else ""))
    table.add_column("counter")
    table.add_column("this run", justify="right")
    table.add_column("all time", justify="right")
    for name in COUNTERS:
        table.add_row(name.replace("_", " "), f"{getattr(run, name):,}", f"{int(total.get(name, 0)):,}")
    console.print(table)
