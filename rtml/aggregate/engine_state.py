"""The embedded engine's state database, `<data_dir>/aggregate.sqlite`: its schema, and what
other processes read from it or trim while the engine runs (its counters, retention of late
events), plus where the engine mirrors its counters.

The engine (`rtml.aggregate.embedded.Engine`) is the file's only writer and commits all of it
in one transaction per batch (see that module); readers here see the last committed state.
"""

from __future__ import annotations

import time

from rtml.aggregate.sinks import aggregate_db_path, connect
from rtml.aggregate.windows import NO_WATERMARK
from rtml.config import SERVICES, Settings
from rtml.storage import Counters, open_counters
from rtml.stream import open_stream

STATE_SCHEMA = """
CREATE TABLE IF NOT EXISTS engine_state (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  stream TEXT NOT NULL,              -- the identity of the log the offset belongs to
  input_offset TEXT,
  watermark INTEGER NOT NULL,
  max_event_time INTEGER NOT NULL,
  next_emit INTEGER,
  max_minute INTEGER,
  events_in INTEGER NOT NULL,
  late INTEGER NOT NULL,
  duplicates INTEGER NOT NULL,
  windows_emitted INTEGER NOT NULL,
  updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS open_windows (
  minute INTEGER PRIMARY KEY,
  tx_count INTEGER NOT NULL,
  fee_total_sat INTEGER NOT NULL,
  tx_hashes TEXT NOT NULL            -- for duplicate detection, comma-separated
);
CREATE TABLE IF NOT EXISTS provisional (
  minute INTEGER PRIMARY KEY,
  revision INTEGER NOT NULL,
  tx_count INTEGER NOT NULL,
  fee_total_sat INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS late_events (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  tx_hash TEXT NOT NULL,
  event_time INTEGER NOT NULL,
  fee_sat INTEGER NOT NULL,
  watermark INTEGER NOT NULL,
  reason TEXT NOT NULL,
  recorded_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS held_events (
  seq INTEGER PRIMARY KEY,           -- stream order
  tx_hash TEXT NOT NULL,
  event_time INTEGER NOT NULL,
  fee_sat INTEGER NOT NULL,
  seen INTEGER NOT NULL              -- later events that did not refute it
);
CREATE TABLE IF NOT EXISTS outlier_outbox (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  tx_hash TEXT NOT NULL,
  event_time INTEGER NOT NULL,
  fee_sat INTEGER NOT NULL,
  reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS stream_resets (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  details TEXT NOT NULL,             -- JSON: what was lost, what was re-derived (recovery.py)
  delivered INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS outbox (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  minute INTEGER NOT NULL,
  tx_count INTEGER NOT NULL,
  fee_total_sat INTEGER NOT NULL,
  revision INTEGER NOT NULL
);
"""


def counters_mirror(settings: Settings) -> Counters | None:
    """Where the engine copies its counters after each commit, for readers on other machines:
    the counters backend when it is a service (the Redis hash `<namespace>:counters:aggregate`);
    none when it is local, where the state file is their only home (`aggregate_counters` reads it)."""
    return open_counters(settings, "aggregate") if settings.backend("counters") in SERVICES else None


def trim_late_events(settings: Settings, before_ms: int) -> int:
    """Retention: forget recorded late events older than `before_ms` (their counter stays)."""
    path = aggregate_db_path(settings)
    if not path.exists():
        return 0
    conn = connect(path)
    try:
        conn.executescript(STATE_SCHEMA)
        return int(conn.execute("DELETE FROM late_events WHERE event_time < ?", (before_ms,)).rowcount)
    finally:
        conn.close()


def aggregate_counters(settings: Settings) -> dict[str, float]:
    """The engine's counters (events in, late, duplicates, windows emitted, watermark, lag).

    `lag_events` is how many stream events the engine has not consumed yet.
    """
    path = aggregate_db_path(settings)
    names = ("events_in", "late", "duplicates", "windows_emitted")
    out = dict.fromkeys((*names, "open_windows", "watermark", "watermark_lag_s", "lag_events"), 0.0)
    offset = None
    if path.exists():
        conn = connect(path)
        try:
            conn.executescript(STATE_SCHEMA)
            row = conn.execute(
                "SELECT input_offset, watermark, events_in, late, duplicates, windows_emitted"
                " FROM engine_state WHERE id = 1"
            ).fetchone()
            if row is not None:
                offset = row[0]
                out.update(zip(names, map(float, row[2:]), strict=True))
                if row[1] != NO_WATERMARK:
                    out["watermark"] = row[1] / 1000
                    out["watermark_lag_s"] = time.time() - row[1] / 1000
            out["open_windows"] = float(conn.execute("SELECT count(*) FROM open_windows").fetchone()[0])
        finally:
            conn.close()
    with open_stream(settings) as stream:
        out["lag_events"] = float(stream.count_after(offset))
    return out
