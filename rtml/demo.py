"""`rtml demo`: synthetic traffic with a fee regime shift, through every stage, on the embedded profile.

Each stage is a function of a `DemoContext`; it does its work, shows progress, and adds lines
to the summary. A part plugs into the demo by adding its stage to `STAGES`.
"""

from __future__ import annotations

import gzip
import importlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from rtml.config import Settings, get_settings
from rtml.sources.synthetic import RegimeShift, SyntheticConfig, SyntheticSource, to_utx_message

T = TypeVar("T")

# Share of demo transactions re-sent a little later (the websocket repeats itself), and
# malformed frames mixed in, so dedup and the dead-letter store have something to do.
DUPLICATE_SHARE = 0.005
GARBAGE_FRAMES = ('{"op":"utx","x":{"hash":"zz"}}', "not json at all", '{"op":"utx","x":{}}')


@dataclass
class DemoContext:
    settings: Settings
    console: Console
    source: SyntheticSource
    shift_at: datetime
    wire_file: Path
    summary: dict[str, str] = field(default_factory=dict)
    events_sent: int = 0
    # Handles later stages may use (e.g. the API server's URL), and what to stop when the demo ends.
    resources: dict[str, Any] = field(default_factory=dict)
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def track(self, items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
        """Iterate with a rich progress bar."""
        columns = (TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=self.console, transient=True) as progress:
            task = progress.add_task(description, total=total)
            for item in items:
                yield item
                progress.advance(task)


def generate(ctx: DemoContext) -> None:
    """Write the synthetic traffic as blockchain.com websocket frames (JSONL.gz)."""
    import random

    rnd = random.Random(ctx.source.config.seed)
    pending: list[tuple[int, str]] = []
    sent = 0
    with gzip.open(ctx.wire_file, "wt", compresslevel=1) as out:
        expected = int(ctx.source.config.minutes * ctx.source.config.rate_per_min)
        for i, event in enumerate(ctx.track(ctx.source.events(), "generating transactions", expected)):
            frame = json.dumps(to_utx_message(event), separators=(",", ":"))
            out.write(frame + "\n")
            sent += 1
            if rnd.random() < DUPLICATE_SHARE:
                pending.append((i + rnd.randint(1, 500), frame))
            while pending and pending[0][0] <= i:
                out.write(pending.pop(0)[1] + "\n")
                sent += 1
            if i % 100_000 == 50_000:
                out.write(GARBAGE_FRAMES[(i // 100_000) % len(GARBAGE_FRAMES)] + "\n")
                sent += 1
        for _, frame in pending:
            out.write(frame + "\n")
            sent += 1
    ctx.events_sent = sent
    cfg = ctx.source.config
    ctx.summary["synthetic traffic"] = (
        f"{sent:,} frames over {cfg.minutes / 60:.0f} h from {cfg.start:%Y-%m-%d %H:%M} UTC, "
        f"fee regime shift x{cfg.shift.multiplier if cfg.shift else 1:.1f} at {ctx.shift_at:%Y-%m-%d %H:%M}"
    )


# (title, "module:function"), in data-flow order.
STAGES: list[tuple[str, str]] = [
    ("generate synthetic traffic", "rtml.demo:generate"),
    ("ingest", "rtml.sources.ingest:demo_stage"),
    ("aggregate", "rtml.aggregate.embedded:demo_stage"),
    ("feature store + training set", "rtml.features.writer:demo_stage"),
    ("train + gate", "rtml.model.train:demo_stage"),
    ("drift + data quality", "rtml.quality.drift:demo_stage"),
    ("serve", "rtml.serving.app:demo_stage"),
    ("monitor + retrain", "rtml.monitoring.loop:demo_stage"),
]


def _load(ref: str) -> Callable[[DemoContext], None]:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


def run_demo(hours: float = 36, seed: int = 7, console: Console | None = None) -> DemoContext:
    """Run all stages in a fresh `<data_dir>/demo` and print the summary."""
    console = console or Console()
    base = get_settings()
    demo_dir = base.root / "demo"
    shutil.rmtree(demo_dir, ignore_errors=True)
    os.environ["RTML_DATA_DIR"] = str(demo_dir)
    os.environ["RTML_PROFILE"] = "embedded"
    settings = get_settings()
    minutes = int(hours * 60)
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=minutes)
    shift_minute = int(minutes * 5 / 6)
    source = SyntheticSource(
        SyntheticConfig(seed=seed, start=start, minutes=minutes, shift=RegimeShift(at_minute=shift_minute))
    )
    ctx = DemoContext(
        settings=settings,
        console=console,
        source=source,
        shift_at=start + timedelta(minutes=shift_minute),
        wire_file=settings.path("demo-input", "utx.jsonl.gz"),
    )
    t0 = time.monotonic()
    try:
        for title, ref in STAGES:
            t = time.monotonic()
            _load(ref)(ctx)
            console.print(f"[green]✓[/] {title} [dim]({time.monotonic() - t:.1f} s)[/]")
    finally:
        for cleanup in reversed(ctx.cleanups):
            cleanup()
    table = Table(title=f"rtml demo — {time.monotonic() - t0:.0f} s, data in {demo_dir}", show_header=False)
    for key, value in ctx.summary.items():
        table.add_row(f"[bold]{key}", value)
    console.print(table)
    return ctx
