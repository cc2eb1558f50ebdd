"""The work behind `rtml up`, `rtml status` and `rtml down`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

from rich.console import Console
from rich.table import Table

from rtml.config import Settings, get_settings
from rtml.ops.purge import PurgeRefused, execute_purge, plan_purge, refusal
from rtml.ops.supervisor import Component, read_state, supervisor_running

T = TypeVar("T")
console = Console()
errors = Console(stderr=True, soft_wrap=True)  # one line per refusal, for people and scripts


def components(settings: Settings, source: str, file: Path | None, speed: str, port: int) -> list[Component]:
    """The long-running parts of the pipeline, in data-flow order."""
    ingest = ["ingest", "--source", source, "--no-archive"]
    if file is not None:
        ingest += ["--file", str(Path(file).resolve()), "--speed", speed]
    host = settings.serving.host
    return [
        Component("ingest", ingest),
        Component("archiver", ["archiver"]),
        Component("aggregate", ["aggregate"]),
        Component("serve", ["serve", "--host", host, "--port", str(port)], ready_url=f"http://{host}:{port}/health"),
        Component("scheduler", ["scheduler"]),
    ]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _wait_ready(settings: Settings, timeout: float) -> tuple[bool, str]:
    """All components running (and answering, where they have a URL) at once, or why not."""
    deadline = time.time() + timeout
    why = "supervisor did not write its state"
    while time.time() < deadline:
        state = read_state(settings)
        if state is None:
            time.sleep(0.2)
            continue
        waiting = []
        for comp in state["components"].values():
            if comp["state"] == "finished":
                continue
            if comp["state"] != "running":
                waiting.append(f"{comp['name']} is {comp['state']} (exit {comp['last_exit']})")
            elif comp["ready_url"] and not _answers(comp["ready_url"]):
                waiting.append(f"{comp['name']} not answering {comp['ready_url']}")
        if not waiting:
            return True, ""
        why = "; ".join(waiting)
        time.sleep(0.3)
    return False, why


def start_pipeline(
    settings: Settings, source: str, file: Path | None, speed: str, port: int, timeout: float
) -> tuple[bool, str]:
    """Start the detached supervisor with every component and wait until all are ready (or why not)."""
    spec = [asdict(c) for c in components(settings, source, file, speed, port)]
    log = open(settings.path("logs", "supervisor.log"), "ab")  # noqa: SIM115 - handed to the child
    subprocess.Popen(
        [sys.executable, "-m", "rtml.ops.supervisor", json.dumps(spec)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env=os.environ.copy(),
    )
    log.close()
    return _wait_ready(settings, timeout)


def bring_up(
    profile: str | None, source: str, file: Path | None, speed: str, port: int | None, timeout: float
) -> int:
    if profile is not None:
        os.environ["RTML_PROFILE"] = profile
    settings = get_settings()
    pid = supervisor_running(settings)
    if pid is not None:
        console.print(f"[yellow]already up[/] (supervisor pid {pid}); `rtml status` shows it")
        return 0
    if settings.backend("stream") == "redis":  # a stream is a durable log only on a persisting Redis
        from rtml.ops.services import check_redis, stream_refusal

        if (why := stream_refusal(settings, check_redis(settings.redis_url))) is not None:
            errors.print(f"[red]refusing to start:[/] {why}")
            return 2
    with console.status("starting components"):
        ok, why = start_pipeline(settings, source, file, speed, port or settings.serving.port, timeout)
    if not ok:
        console.print(f"[red]not ready after {timeout:.0f} s:[/] {why}; logs in {settings.root / 'logs'}")
        return 1
    console.print(f"[green]up[/] ({settings.profile}, data in {settings.root})")
    show_status(False)
    return 0


def gather_status(settings: Settings) -> dict:
    """Everything `rtml status` shows, as plain data."""
    state = read_state(settings) or {"components": {}}
    pid = supervisor_running(settings)
    now = time.time()
    comps = []
    for comp in state["components"].values():
        alive = comp["pid"] is not None and pid is not None and _pid_alive(comp["pid"])
        comps.append(
            {
                "name": comp["name"],
                "state": comp["state"] if pid is not None else "stopped",
                "pid": comp["pid"] if alive else None,
                "uptime_s": round(now - comp["started_at"], 1) if alive and comp["started_at"] else None,
                "restarts": comp["restarts"],
                "last_exit": comp["last_exit"],
                **component_health(settings, comp["name"], alive),
            }
        )
    from rtml.ops.retention import store_stats
    from rtml.ops.services import service_health, service_warnings
    from rtml.spool import spool_stats

    health = service_health(settings)
    down: list[str] = []
    no_stores: list[dict[str, object]] = []
    return {
        "supervisor_pid": pid,
        "profile": settings.profile,
        "data_dir": str(settings.root),
        "components": comps,
        **_unless_down(pipeline_facts, settings, dict.fromkeys(FACTS), down),
        "stores": _unless_down(store_stats, settings, no_stores, down),
        # What status could not read because a service is down (the facts are None meanwhile).
        "unreadable": down,
        "services": [h.as_dict() for h in health],
        "warnings": service_warnings(settings, health),
        # services: records waiting in the local spool for PostgreSQL, and those the spool's
        # bound or age dropped, per store (rtml.spool)
        **({"spool": spool_stats(settings)} if "postgres" in settings.services else {}),
    }


FACTS = ("stream_lag_events", "newest_minute_end", "freshness_s", "champion_version", "last_drift", "clock",
         "champion_kind", "forecasts_logged", "hours_judged", "retrains")  # fmt: skip


def _unless_down(read: Callable[[Settings], T], settings: Settings, fallback: T, down: list[str]) -> T:
    """`read(settings)`, or `fallback` while a service it needs is unreachable (noted in `down`):
    `rtml status` answers during an outage, which is when it is needed most."""
    from rtml.outage import service_of

    try:
        return read(settings)
    except Exception as exc:
        if (service := service_of(exc)) is None:
            raise
        down.append(f"{read.__name__}: {service} unreachable ({type(exc).__name__}: {str(exc)[:200]})")
        return fallback


def component_health(settings: Settings, name: str, alive: bool) -> dict[str, object]:
    """What a running component says of itself (rtml.outage): `health` (`ok`, `degraded`
    while a service it needs is unreachable), `services_down` (service -> seconds down),
    `last_error` and `last_error_at` (ISO time), and its counters (the ingest buffer's)."""
    from rtml.outage import read_health

    doc = read_health(settings, name) if alive else None
    if doc is None:
        return {"health": None, "services_down": {}, "last_error": None, "last_error_at": None}
    now = time.time()
    at = doc.get("last_error_at")
    extra = {k: v for k, v in doc.items() if k not in ("component", "health", "services_down", "last_error",
                                                       "last_error_at", "updated_at", "absorbed")}  # fmt: skip
    return {
        "health": doc.get("health"),
        "services_down": {s: round(now - t, 1) for s, t in doc.get("services_down", {}).items()},
        "last_error": doc.get("last_error"),
        "last_error_at": datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds") if at else None,
        **extra,
    }


def pipeline_facts(settings: Settings) -> dict[str, object]:
    """Stream lag, freshness of the newest minute, champion version, last drift verdict, and the
    loop: the pipeline clock, the champion's kind, forecasts logged, hours judged, retrainings."""
    from rtml.aggregate.clock import pipeline_clock
    from rtml.aggregate.embedded import aggregate_counters
    from rtml.aggregate.sinks import read_minutes
    from rtml.model.registry import champion_kind, champion_version, registry_exists
    from rtml.monitoring.evaluate import QualityStore
    from rtml.monitoring.events import EventLog
    from rtml.serving.prediction_log import count_predictions

    counters = aggregate_counters(settings)
    # The newest closed minute is just behind the engine's watermark.
    since = datetime.fromtimestamp(counters["watermark"], UTC) - timedelta(hours=1)
    recent = read_minutes(settings, since) if counters["watermark"] else []
    newest = recent[-1].event_time if recent else None
    events = EventLog(settings)
    drift = events.recent(limit=1, prefix="drift.")
    retrains = events.count("retrain.started")
    events.close()
    quality = QualityStore(settings)
    hours_judged = quality.count()
    quality.close()
    clock = pipeline_clock(settings)
    registry = registry_exists(settings)
    return {
        "stream_lag_events": int(counters["lag_events"]),
        "newest_minute_end": newest.isoformat() if newest else None,
        "freshness_s": round((datetime.now(UTC) - newest).total_seconds(), 1) if newest else None,
        "champion_version": champion_version(settings) if registry else None,
        "last_drift": (
            f"{drift[0].kind} at {datetime.fromtimestamp(drift[0].time_ms / 1000, UTC):%Y-%m-%d %H:%M} UTC"
            f" (share {drift[0].details.get('share')})"
            if drift
            else None
        ),
        "clock": clock.isoformat() if clock else None,
        "champion_kind": champion_kind(settings) if registry else None,
        "forecasts_logged": count_predictions(settings),
        "hours_judged": hours_judged,
        "retrains": retrains,
    }


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def show_status(json_out: bool) -> None:
    status = gather_status(get_settings())
    if json_out:
        print(json.dumps(status, indent=1))
        return
    running = status["supervisor_pid"] is not None
    table = Table(title=f"rtml {'up' if running else 'down'} — {status['profile']}, {status['data_dir']}")
    for column in ("component", "state", "pid", "uptime", "restarts", "health"):
        table.add_column(column)
    for c in status["components"]:
        uptime = f"{c['uptime_s']:.0f} s" if c["uptime_s"] is not None else "-"
        table.add_row(c["name"], c["state"], str(c["pid"] or "-"), uptime, str(c["restarts"]), _health(c))
    console.print(table)
    for key, value in status.items():
        if key not in ("supervisor_pid", "profile", "data_dir", "components", "stores", "services", "warnings",
                       "unreadable"):  # fmt: skip
            console.print(f"[bold]{key.replace('_', ' ')}[/]: {value}")
    if status["services"]:
        console.print(services_table(status["services"]))
    console.print(stores_table(status["stores"]))
    for warning in status["warnings"]:
        console.print(f"[yellow]warning:[/] {warning}")
    for what in status["unreadable"]:
        console.print(f"[yellow]not read during an outage:[/] {what}")


def services_table(services: list[dict]) -> Table:
    """Each service's health: reachable, persistence, the latency of one PING / SELECT 1."""
    table = Table(title="services")
    for column in ("service", "url", "reachable", "persistence", "latency", "error"):
        table.add_column(column)
    for s in services:
        latency = f"{s['latency_ms']:.2f} ms" if s["latency_ms"] is not None else "-"
        reachable = "yes" if s["reachable"] else "[red]no[/]"
        persistence = s["persistence"] or "-"
        if s["durable"] is False:
            persistence = f"[yellow]{persistence}[/]"
        table.add_row(s["name"], s["url"], reachable, persistence, latency, s["error"] or "")
    return table


def _health(c: dict) -> str:
    """`ok`, or `degraded: redis down 12 s (last error at ...: ...)`, plus the buffer's figures."""
    if c["health"] is None:
        return "-"
    text = c["health"]
    if c["services_down"]:
        down = ", ".join(f"{s} down {t:.0f} s" for s, t in c["services_down"].items())
        text += f": {down} (last error at {c['last_error_at']}: {c['last_error']})"
    if c.get("buffered_events") or c.get("buffer_dropped"):
        text += f"; buffered {c['buffered_events']:,}, dropped {c['buffer_dropped']:,}"
    return text


def stores_table(stores: list[dict]) -> Table:
    """Disk (or Redis/PostgreSQL) use per store, with the total: what retention keeps bounded."""
    table = Table(title="stores")
    for column, justify in (("store", "left"), ("bytes", "right"), ("rows", "right"), ("oldest (event time)", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for s in stores:
        table.add_row(s["name"], f"{s['bytes']:,}", f"{s['rows']:,}", s["oldest"] or "-")
    total = sum(max(0, s["bytes"]) for s in stores)
    table.add_row("total", f"{total:,}", f"{sum(max(0, s['rows']) for s in stores):,}", "", style="bold")
    return table


def bring_down(purge: bool, yes: bool) -> int:
    """Stop the pipeline; with `purge`, delete its state. A directory that is not provably rtml's
    is refused (exit 2) before anything is stopped or created in it."""
    settings = get_settings()
    services = bool(settings.services)
    if purge and (why := refusal(settings, services)) is not None:
        errors.print(f"[red]refusing to purge:[/] {why}")
        return 2
    pid = supervisor_running(settings)
    if pid is not None and pid > 0:
        os.kill(pid, signal.SIGTERM)
        with console.status("stopping components (committing in-flight work)"):
            deadline = time.time() + 60
            while supervisor_running(settings) is not None and time.time() < deadline:
                time.sleep(0.2)
        if supervisor_running(settings) is not None:
            console.print("[red]supervisor did not stop in 60 s[/]")
            return 1
        console.print("[green]stopped[/]")
    elif not purge:
        console.print("nothing running")
    if not purge:
        return 0
    try:
        plan = plan_purge(settings, services=services)
    except PurgeRefused as exc:
        errors.print(f"[red]refusing to purge:[/] {exc}")
        return 2
    if plan.empty:
        console.print("nothing to purge")
        return 0
    console.print("[bold]will delete:[/]")
    for line in plan.describe():
        console.print(f"  - {line}")
    if not yes and not sys.stdin.isatty():
        console.print("[red]refusing to purge without confirmation: pass --yes[/]")
        return 1
    if not yes and not _confirm():
        return 1
    execute_purge(settings, plan)
    console.print("[green]purged[/]")
    return 0


def _confirm() -> bool:
    import typer

    return typer.confirm("delete all of it?", default=False)
