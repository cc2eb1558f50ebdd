"""`rtml demo`: `rtml up` on compressed time.

The demo writes synthetic traffic with a fee regime shift as blockchain.com websocket frames,
from a fixed start (the same `--seed` tells the same story at any hour of the day), starts the
supervised pipeline on it (`rtml up --source replay --file F --speed max`, embedded profile, in
`<data_dir>/demo`), waits until the loop has settled, and prints what the pipeline recorded by
itself: the event log, the registry, the prediction log and the reports. Nothing here scripts
what the pipeline does; the demo only reads. A crash of the demo leaves the pipeline running
(`rtml --data-dir <data_dir>/demo down` stops it).
"""

from __future__ import annotations

import gzip
import json
import os
import random
import shutil
import socket
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from rtml.config import Settings, get_settings
from rtml.sources.synthetic import RegimeShift, SyntheticConfig, SyntheticSource, to_utx_message

T = TypeVar("T")

# A Monday at midnight UTC: the daily rhythm and the shift land at the same phase on every run.
DEMO_START = datetime(2024, 10, 7, tzinfo=UTC)
# Share of demo transactions re-sent a little later (the websocket repeats itself), and
# malformed frames mixed in, so dedup and the dead-letter store have something to do.
DUPLICATE_SHARE = 0.005
GARBAGE_FRAMES = ('{"op":"utx","x":{"hash":"zz"}}', "not json at all", '{"op":"utx","x":{}}')
# The loop has settled when the clock has not moved for this long and the scheduler is idle at it.
SETTLED_S = 5.0


@dataclass(frozen=True)
class Story:
    """What the demo replays: the synthetic source and where its shift is."""

    source: SyntheticSource
    shift_at: datetime

    @classmethod
    def build(cls, hours: float, seed: int, rate_per_min: float | None = None) -> Story:
        minutes = int(hours * 60)
        shift_minute = int(minutes * 5 / 6)
        config = SyntheticConfig(seed=seed, start=DEMO_START, minutes=minutes, shift=RegimeShift(at_minute=shift_minute))
        if rate_per_min is not None:
            config = SyntheticConfig(**{**vars(config), "rate_per_min": rate_per_min})
        return cls(SyntheticSource(config), DEMO_START + timedelta(minutes=shift_minute))


def track(console: Console, items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a rich progress bar."""
    columns = (TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task)


def write_wire_file(story: Story, path: Path, console: Console | None = None) -> int:
    """The synthetic traffic as websocket frames (JSONL.gz), with repeats and garbage; returns frames."""
    cfg = story.source.config
    rnd = random.Random(cfg.seed)
    pending: list[tuple[int, str]] = []
    sent = 0
    events: Iterable = story.source.events()
    if console is not None:
        events = track(console, events, "generating transactions", int(cfg.minutes * cfg.rate_per_min))
    with gzip.open(path, "wt", compresslevel=1) as out:
        for i, event in enumerate(events):
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
    return sent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def loop_state(settings: Settings) -> dict[str, object]:
    """Where the loop is: replay finished, stream lag, the clock, and the clock the scheduler is idle at."""
    from rtml.aggregate.clock import pipeline_clock
    from rtml.aggregate.embedded import aggregate_counters
    from rtml.ops.scheduler import scheduler_state
    from rtml.ops.supervisor import read_state

    state = read_state(settings) or {"components": {}}
    ingest = state["components"].get("ingest", {})
    clock = pipeline_clock(settings)
    _, idle_ms = scheduler_state(settings)
    counters = aggregate_counters(settings)
    return {
        "replayed": ingest.get("state") == "finished",
        "lag": int(counters["lag_events"]),
        "open_windows": int(counters["open_windows"]),
        "clock": clock,
        "idle_at": datetime.fromtimestamp(idle_ms / 1000, UTC) if idle_ms is not None else None,
    }


def wait_settled(
    settings: Settings, timeout_s: float, console: Console | None = None, all_closed: bool = False
) -> dict[str, object]:
    """Poll until the replay finished, the stream is drained, the clock stopped and the scheduler is idle at it.

    `all_closed` also waits for the last window: after a replay's last event it closes only once
    the watermark, moving with the wall clock, passes its end (allowed lateness after about a
    minute of quiet); without it, the run ends a minute earlier or later depending on timing.
    """
    deadline = time.monotonic() + timeout_s
    moved_at, last_clock = time.monotonic(), None
    status = console.status("") if console is not None else None
    if status is not None:
        status.start()
    try:
        while True:
            state = loop_state(settings)
            if state["clock"] != last_clock:
                moved_at, last_clock = time.monotonic(), state["clock"]
            settled = (
                state["replayed"] and state["lag"] == 0 and state["clock"] is not None
                and (state["open_windows"] == 0 or not all_closed)
                and state["idle_at"] == state["clock"] and time.monotonic() - moved_at >= SETTLED_S
            )  # fmt: skip
            if settled:
                return state
            if time.monotonic() > deadline:
                raise TimeoutError(f"the pipeline did not settle within {timeout_s:.0f} s: {state}")
            if status is not None:
                clock = f"{state['clock']:%Y-%m-%d %H:%M}" if state["clock"] else "-"
                idle = f"{state['idle_at']:%H:%M}" if state["idle_at"] else "-"
                status.update(
                    f"  pipeline clock {clock} UTC, scheduler caught up to {idle}, "
                    f"{'replay done' if state['replayed'] else 'replaying'}, stream lag {state['lag']:,}, "
                    f"open windows {state['open_windows']}"
                )
            time.sleep(0.5)
    finally:
        if status is not None:
            status.stop()


def _hhmm(iso: str) -> str:
    return datetime.fromisoformat(iso).strftime("%H:%M")


def summarize(settings: Settings, story: Story, frames: int, url: str | None) -> dict[str, str]:
    """The summary lines, all read from what the pipeline recorded."""
    from rtml.aggregate.embedded import aggregate_counters
    from rtml.aggregate.sinks import read_minutes
    from rtml.archive.parquet_lake import archive_files
    from rtml.features.offline import read_minutes_df
    from rtml.features.online_keys import online_count
    from rtml.model.registry import champion_kind, champion_version, list_versions
    from rtml.monitoring.evaluate import QualityStore
    from rtml.monitoring.events import EventLog
    from rtml.serving.prediction_log import count_predictions
    from rtml.sources.ingest import ingest_counters

    cfg = story.source.config
    out: dict[str, str] = {}
    out["synthetic traffic"] = (
        f"{frames:,} frames over {cfg.minutes / 60:.0f} h from {cfg.start:%Y-%m-%d %H:%M} UTC, "
        f"fee regime shift x{cfg.shift.multiplier if cfg.shift else 1:.1f} at {story.shift_at:%Y-%m-%d %H:%M}"
    )
    c = ingest_counters(settings)
    out["events in"] = (
        f"{int(c['received']):,} received / {int(c['valid']):,} valid / {int(c['duplicates']):,} duplicates"
        f" / {int(c['dead_letters']):,} dead letters"
    )
    files = archive_files(settings)
    out["raw archive"] = f"{len(files)} Parquet files in {len({f.parent for f in files})} hour partitions"
    a = aggregate_counters(settings)
    minutes = read_minutes(settings)
    span = f", {minutes[0].minute:%Y-%m-%d %H:%M} .. {minutes[-1].minute:%Y-%m-%d %H:%M} UTC" if minutes else ""
    out["minutes produced"] = (
        f"{len(minutes):,} minutes from {int(a['events_in']):,} events{span} "
        f"({int(a['late'])} late, {int(a['duplicates'])} duplicates dropped)"
    )
    stored = read_minutes_df(settings)
    out["feature store"] = f"{len(stored):,} offline minutes, {online_count(settings):,} online minutes"

    events = EventLog(settings)
    quality = QualityStore(settings)
    try:
        log = events.recent(limit=100_000)
        hours = quality.hours(limit=24 * 14)
    finally:
        events.close()
        quality.close()
    versions = {v["version"]: v for v in list_versions(settings)}
    gates = [e for e in log if e.kind == "model.gate"]
    starts = [e for e in log if e.kind == "retrain.started"]
    baseline = next((e for e in log if e.kind == "model.promoted"), None)
    if baseline is not None:
        out["baseline champion"] = f"v{baseline.details['version']}: {baseline.details.get('reason', '')}"
    first = next((e for e in starts if e.details.get("reason") == "first"), None)
    first_gate = next((e for e in gates if first is not None and e.id > first.id), None)
    if first is not None and first_gate is not None:
        out["model quality"] = _gate_line(first_gate.details) + f" (first training at {_hhmm(first.details['clock'])} UTC)"
    out["forecasts"] = (
        f"{count_predictions(settings):,} pipeline forecasts logged, one per closed minute "
        f"from {min((h.hour for h in hours), default=cfg.start):%H:%M} UTC; {len(hours)} hours judged"
    )
    drift = [e for e in log if e.kind.startswith("drift.")]
    alerts = [e for e in drift if e.kind == "drift.alert"]
    if drift:
        last = alerts[-1] if alerts else drift[-1]
        out["drift verdict"] = (
            f"{len(drift)} hourly checks, {len(alerts)} alerts; last {'alert' if alerts else 'check'}: "
            f"{last.kind} share {last.details.get('share', 0):.0%} ({', '.join(last.details.get('drifted_columns', [])) or 'no column'}), "
            f"current {last.details.get('current')}; report {last.details.get('report')}"
        )
    quality_events = [e for e in log if e.kind.startswith("quality.")]
    if quality_events:
        failed = sum(e.kind == "quality.failed" for e in quality_events)
        out["data quality"] = f"{len(quality_events)} checks, {failed} with failed rules"
    after = story.shift_at - timedelta(hours=1)
    judged = [h for h in hours if h.hour >= after]
    out["forecast quality"] = (
        f"hourly wQL from {after:%H:%M} UTC (shift at {story.shift_at:%H:%M}; ! = breach of "
        f"{settings.monitoring.wql_threshold}): "
        + ("  ".join(f"{h.hour:%H:%M} {h.wql:.2f}{'!' if h.breach else ''} v{h.model_version}" for h in judged) or "none")
    )
    first_breach = next(
        (e for e in log if e.kind == "monitor.breach" and e.details["hour_ms"] >= after.timestamp() * 1000), None
    )
    story_events = [e for e in log if first_breach and e.id >= first_breach.id and e.kind.startswith(("monitor.", "retrain.", "model."))]
    out["monitoring events"] = _compress([e.kind for e in story_events]) or "none after the shift"
    shift_retrains = [e for e in starts if first_breach is not None and e.id > first_breach.id]
    if shift_retrains:
        r = shift_retrains[0]
        decision = next((e for e in gates if e.id > r.id), None)
        out["retraining"] = f"triggered by {r.details['reason']} at {_hhmm(r.details['clock'])} UTC: " + (
            _gate_line(decision.details) if decision else "no gate decision yet"
        )
    champion = champion_version(settings)
    kind = champion_kind(settings)
    trained = [v for v in versions.values() if v.get("kind", "model") == "model"]
    out["champion"] = f"v{champion} ({kind}); {len(versions)} versions registered, {len(trained)} trained, {len(starts)} trainings started"
    out["dashboard"] = (
        f"{url}/dashboard/ (metrics: {url}/metrics)" if url
        else f"rtml serve --data-dir {settings.root}, then http://{settings.serving.host}:{settings.serving.port}/dashboard/"
    )  # fmt: skip
    return out


def _gate_line(d: dict) -> str:
    verdict = "promoted: new champion" if d.get("promote") else "rejected by the gate"
    return (
        f"v{d['version']} wQL {d['candidate_wql']:.3f} vs {d['best_baseline']} {d['best_baseline_wql']:.3f} "
        f"({d['gain_vs_baseline']:+.1%}), {verdict}"
    )


def _compress(kinds: list[str]) -> str:
    """`a → a → a → b` as `a ×3 → b`."""
    parts: list[tuple[str, int]] = []
    for k in kinds:
        if parts and parts[-1][0] == k:
            parts[-1] = (k, parts[-1][1] + 1)
        else:
            parts.append((k, 1))
    return " → ".join(f"{k} ×{n}" if n > 1 else k for k, n in parts)


def run_demo(
    hours: float = 36, seed: int = 7, serve: bool = False, console: Console | None = None, timeout_s: float = 600
) -> dict[str, str]:
    """Run `rtml up` on the synthetic replay in a fresh `<data_dir>/demo`, print and return the summary."""
    from rtml.ops.deploy import bring_down, start_pipeline

    # Third-party deprecation noise says nothing to a demo's reader (the pipeline's own logs keep it).
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    console = console or Console()
    base = get_settings()
    demo_dir = base.root / "demo"
    os.environ["RTML_DATA_DIR"] = str(demo_dir)
    os.environ["RTML_PROFILE"] = "embedded"
    settings = get_settings()
    from rtml.ops.supervisor import supervisor_running

    if supervisor_running(settings) is not None:
        bring_down(purge=False, yes=True)
    shutil.rmtree(demo_dir, ignore_errors=True)
    settings = get_settings()
    story = Story.build(hours, seed)
    t0 = time.monotonic()
    wire = settings.path("demo-input", "utx.jsonl.gz")
    frames = write_wire_file(story, wire, console)
    console.print(f"[green]✓[/] generate synthetic traffic [dim]({time.monotonic() - t0:.1f} s)[/]")
    port = free_port()
    t = time.monotonic()
    with console.status("  starting the pipeline (rtml up --source replay --speed max)"):
        ok, why = start_pipeline(settings, "replay", wire, "max", port, timeout=180)
    if not ok:
        console.print(f"[red]the pipeline did not start:[/] {why}; logs in {settings.root / 'logs'}")
        raise SystemExit(1)
    console.print(f"[green]✓[/] rtml up [dim]({time.monotonic() - t:.1f} s)[/]")
    t = time.monotonic()
    try:
        wait_settled(settings, timeout_s, console, all_closed=True)
        console.print(f"[green]✓[/] loop settled [dim]({time.monotonic() - t:.1f} s)[/]")
        url = f"http://{settings.serving.host}:{port}"
        summary = summarize(settings, story, frames, url if serve else None)
    finally:
        if not serve:
            bring_down(purge=False, yes=True)
    table = Table(title=f"rtml demo — {time.monotonic() - t0:.0f} s, data in {demo_dir}", show_header=False)
    for key, value in summary.items():
        table.add_row(f"[bold]{key}", value)
    console.print(table)
    if serve:
        console.print(f"serving on {url}/dashboard/ — Ctrl-C stops the pipeline")
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            bring_down(purge=False, yes=True)
    else:
        console.print(f"open the dashboard on this data: [bold]rtml serve --data-dir {demo_dir}[/] (or `rtml demo --serve`)")
    return summary
