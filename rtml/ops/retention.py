"""Retention: every store keeps a window of event time on the pipeline clock (`[retention]`).

The scheduler's `retention` job calls `run_retention(settings, t)` at every boundary t of
`retention.interval_s` (hourly). Each store trims itself below its cutoff t - window, by the
event time it records (the stream: event time; predictions: target minute; events: the
clock when recorded; reports: the run's time; online and offline: the minute; candidates:
their training window's end; dead letters: ingestion's guarded event clock when refused,
since a refused frame has no event time to trust; their count is also capped as they arrive,
`retention.dead_letters_max_rows`). What retention never deletes:
- stream events a consumer (`aggregator`, `archiver`) has not committed: the stream trims a
  prefix no longer than the lowest committed offset, and nothing before both committed once;
- the champion and every version on its history (the last `retention.champion_history`, what
  rollback can return to), their artifacts and the offline minutes of their training windows;
- the reports the dashboard links to (the newest `DASHBOARD_REPORTS`).
Every trim is a deletion below a cutoff, so re-running a boundary (after a crash) deletes
nothing more; each store's trim is one transaction or a sequence of whole-file deletions,
so a kill -9 in the middle leaves some stores trimmed and the rest for the next run, never
a kept row lost. A store whose window is 0 (the archive and offline store by default) is
kept forever.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from rtml.config import Settings

log = logging.getLogger("rtml.retention")

DAY_MS = 86_400_000
# The stream's consumers under `rtml up`: retention trims only what both have committed.
CONSUMERS = ("aggregator", "archiver")
STORES = (
    "stream", "dead_letters", "predictions", "caller_predictions", "events",
    "reports", "online", "offline", "archive", "registry",
)  # fmt: skip


def windows_ms(settings: Settings) -> dict[str, int]:
    """Each store's window in ms (0 = forever); `registry` is the candidates' window."""
    r = settings.retention
    days = {
        "dead_letters": r.dead_letters_days, "predictions": r.predictions_days,
        "caller_predictions": r.caller_predictions_days, "events": r.events_days, "reports": r.reports_days,
        "online": r.online_days, "offline": r.offline_days, "archive": r.archive_days, "registry": r.candidates_days,
    }  # fmt: skip
    return {"stream": int(r.stream_hours * 3_600_000), **{k: int(v * DAY_MS) for k, v in days.items()}}


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def run_retention(settings: Settings, t_ms: int) -> dict[str, int]:
    """Trim every store to its window before clock t; returns what each store dropped.

    A store that fails is logged and skipped (the others still trim); the error is raised
    at the end so the scheduler records the job as failed.
    """
    windows = windows_ms(settings)
    dropped: dict[str, int] = {}
    errors: list[str] = []
    for name, trim in _trims(settings).items():
        if windows[name] <= 0:
            continue
        try:
            dropped[name] = trim(t_ms - windows[name])
        except Exception as exc:  # one broken store must not keep the others growing
            log.exception("retention of %s failed", name)
            errors.append(f"{name}: {exc}")
    checkpoint_sqlite(settings)
    if errors:
        raise RuntimeError("; ".join(errors))
    log.info("retention at %s: %s", _at(t_ms).isoformat(), dropped)
    return dropped


# The SQLite files under the data directory (WAL mode): their logs are folded back hourly.
SQLITE_FILES = (
    "stream.sqlite", "ingest.sqlite", "dedup.sqlite", "aggregate.sqlite", "predictions.sqlite", "events.sqlite",
    "monitoring.sqlite", "scheduler.sqlite", "feature_repo/data/online.db",
)  # fmt: skip


def checkpoint_sqlite(settings: Settings) -> None:
    """Fold each write-ahead log into its database and truncate it: SQLite reuses a log but never
    shrinks it, so each keeps the size of its largest burst (a max-speed replay's catch-up) and,
    with readers always open, often more. A log busy right now is left for the next hour."""
    import sqlite3

    for name in SQLITE_FILES:
        path = settings.root / name
        if path.exists():
            conn = sqlite3.connect(path, timeout=5)
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.OperationalError as exc:
                log.info("checkpoint of %s deferred: %s", name, exc)
            finally:
                conn.close()


def _trims(settings: Settings) -> dict[str, Callable[[int], int]]:
    def stream(before: int) -> int:
        from rtml.stream import open_stream

        with open_stream(settings) as s:
            return s.trim_consumed(before, CONSUMERS)

    def dead_letters(before: int) -> int:
        from rtml.aggregate.embedded import trim_late_events
        from rtml.sources.deadletters import open_ingest_store

        with open_ingest_store(settings) as store:
            return store.trim_dead_letters(before) + trim_late_events(settings, before)

    def predictions(before: int) -> int:
        from rtml.monitoring.evaluate import QualityStore
        from rtml.serving.prediction_log import JUDGED_KINDS, PredictionStore

        store, quality = PredictionStore(settings), QualityStore(settings)
        try:
            return store.trim(JUDGED_KINDS, before) + quality.trim(before)
        finally:
            store.close()
            quality.close()

    def caller_predictions(before: int) -> int:
        from rtml.serving.prediction_log import JUDGED_KINDS, PredictionStore

        store = PredictionStore(settings)
        try:
            return store.trim(JUDGED_KINDS, before, exclude=True)
        finally:
            store.close()

    def events(before: int) -> int:
        from rtml.monitoring.events import EventLog

        log = EventLog(settings)
        try:
            return log.trim(before)
        finally:
            log.close()

    def reports(before: int) -> int:
        from rtml.quality.reports import trim_reports

        return trim_reports(settings, _at(before))

    def online(before: int) -> int:
        from rtml.features.online_keys import trim_online

        return trim_online(settings, before)

    def offline(before: int) -> int:
        from rtml.features.offline import open_offline
        from rtml.model.registry import registry_exists
        from rtml.model.registry_retention import protected_windows

        keep = protected_windows(settings) if registry_exists(settings) else []
        store = open_offline(settings)
        try:
            return store.trim(_at(before), keep)
        finally:
            getattr(store, "close", lambda: None)()

    def archive(before: int) -> int:
        from rtml.archive.parquet_lake import trim_archive

        return trim_archive(settings, before)

    def registry(before: int) -> int:
        from rtml.model.registry import registry_exists
        from rtml.model.registry_retention import trim_candidates

        return trim_candidates(settings, _at(before)) if registry_exists(settings) else 0

    return {
        "stream": stream, "dead_letters": dead_letters, "predictions": predictions,
        "caller_predictions": caller_predictions, "events": events, "reports": reports, "online": online,
        "offline": offline, "archive": archive, "registry": registry,
    }  # fmt: skip


@dataclass(frozen=True)
class StoreStats:
    """One row of `rtml status`'s `stores`: `oldest` is ISO-8601 UTC event time (None when empty)."""

    name: str
    bytes: int
    rows: int
    oldest: str | None


def store_stats(settings: Settings) -> list[dict[str, object]]:
    """`{name, bytes, rows, oldest}` of every store, in `STORES` order (a failing store reports -1)."""
    out = []
    for name, stat in _stats(settings).items():
        try:
            size, rows, oldest = _retry(stat)
        except Exception as exc:  # status must answer even when one store is unreachable
            log.warning("stats of %s failed: %s", name, exc)
            size, rows, oldest = -1, -1, None
        out.append(asdict(StoreStats(name, size, rows, None if oldest is None else _at(oldest).isoformat())))
    return out


def _retry(stat: Callable[[], tuple[int, int, int | None]]) -> tuple[int, int, int | None]:
    """Once more on failure: a store trimmed by another process while read (a registry version
    deleted between listing and reading it) answers on the second look."""
    try:
        return stat()
    except Exception:
        return stat()


def _stats(settings: Settings) -> dict[str, Callable[[], tuple[int, int, int | None]]]:
    def stream() -> tuple[int, int, int | None]:
        from rtml.stream import open_stream

        with open_stream(settings) as s:
            return s.stats()

    def dead_letters() -> tuple[int, int, int | None]:
        from rtml.sources.deadletters import open_ingest_store

        with open_ingest_store(settings) as store:
            return store.dead_letter_stats()

    def predictions(kinds: tuple[str, ...], exclude: bool) -> tuple[int, int, int | None]:
        from rtml.serving.prediction_log import PredictionStore

        store = PredictionStore(settings)
        try:
            return store.stats(kinds, exclude)
        finally:
            store.close()

    def events() -> tuple[int, int, int | None]:
        from rtml.monitoring.events import EventLog

        log = EventLog(settings)
        try:
            return log.stats()
        finally:
            log.close()

    def offline() -> tuple[int, int, int | None]:
        from rtml.features.offline import open_offline

        store = open_offline(settings)
        try:
            return store.stats()
        finally:
            getattr(store, "close", lambda: None)()

    def reports() -> tuple[int, int, int | None]:
        from rtml.quality.reports import report_stats

        return report_stats(settings)

    def online() -> tuple[int, int, int | None]:
        from rtml.features.online_keys import online_stats

        return online_stats(settings)

    def archive() -> tuple[int, int, int | None]:
        from rtml.archive.parquet_lake import archive_stats

        return archive_stats(settings)

    def registry() -> tuple[int, int, int | None]:
        from rtml.model.registry import registry_exists
        from rtml.model.registry_retention import registry_stats

        return registry_stats(settings) if registry_exists(settings) else (0, 0, None)

    from rtml.serving.prediction_log import JUDGED_KINDS

    return {
        "stream": stream, "dead_letters": dead_letters,
        "predictions": lambda: predictions(JUDGED_KINDS, False),
        "caller_predictions": lambda: predictions(JUDGED_KINDS, True),
        "events": events, "reports": reports, "online": online, "offline": offline, "archive": archive,
        "registry": registry,
    }  # fmt: skip
