"""The embedded stream: an append-only SQLite table in WAL mode, `<data_dir>/stream.sqlite`.

WAL lets one writer (ingestion) and any number of readers (aggregator, archiver, the Spark
data source) work at once without blocking each other. The INTEGER PRIMARY KEY AUTOINCREMENT
`offset` never reuses a value, even after a trim, so offsets stay valid forever.
`synchronous=NORMAL` survives any process crash (kill -9); only an OS crash can lose the last
committed batches, which the sources then re-send (dedup makes that harmless).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from rtml.contracts import TxEvent
from rtml.storage import sqlite_connect
from rtml.stream.base import Offset, Row, Slim, Stream

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
  offset INTEGER PRIMARY KEY AUTOINCREMENT,
  tx_hash TEXT NOT NULL,
  event_time INTEGER NOT NULL,
  fee_sat INTEGER NOT NULL,
  size INTEGER NOT NULL,
  source TEXT NOT NULL,
  ingest_time INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS stream_meta (
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS consumer_offsets (
  consumer TEXT PRIMARY KEY,
  offset INTEGER NOT NULL
);
"""


class SqliteStream(Stream):
    def __init__(self, path: Path) -> None:
        self.path = path
        # auto_vacuum: retention's trims give their pages back to the file system, so the file
        # follows the window, not its peak.
        self._conn = sqlite_connect(path, auto_vacuum=True)
        self._conn.executescript(SCHEMA)
        self._conn.execute(
            "INSERT OR IGNORE INTO stream_meta VALUES ('identity', ?)", (f"sqlite:{uuid.uuid4().hex}",)
        )
        self.identity = self._conn.execute("SELECT value FROM stream_meta WHERE key = 'identity'").fetchone()[
            0
        ]

    def append_rows(self, rows: Sequence[Row]) -> Offset | None:
        if not rows:
            return None
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                "INSERT INTO events (tx_hash, event_time, fee_sat, size, source, ingest_time)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
            last = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return str(last)

    def read(self, after: Offset | None, limit: int) -> list[tuple[Offset, TxEvent]]:
        cur = self._conn.execute(
            "SELECT offset, tx_hash, event_time, fee_sat, size, source, ingest_time FROM events"
            " WHERE offset > ? ORDER BY offset LIMIT ?",
            (int(after) if after is not None else 0, limit),
        )
        return [(str(r[0]), TxEvent(*r[1:])) for r in cur]

    def read_slim(self, after: Offset | None, limit: int) -> tuple[list[Slim], Offset | None]:
        # Offsets only grow (AUTOINCREMENT), so within one snapshot the range (after, min(after +
        # limit, max offset)] is exactly what a reader may take; selecting three columns instead of
        # four (no per-row offset) is the engine's hottest query.
        low = int(after) if after is not None else 0
        conn = self._conn
        conn.execute("BEGIN")
        try:
            top = conn.execute("SELECT max(offset) FROM events").fetchone()[0]
            if top is None or top <= low:
                return [], after
            high = min(low + limit, top)
            query = "SELECT tx_hash, event_time, fee_sat FROM events WHERE offset > ? AND offset <= ? ORDER BY offset"
            rows = conn.execute(query, (low, high)).fetchall()
            if not rows:  # a trimmed stretch: skip to the next event that exists
                low = (
                    conn.execute("SELECT min(offset) FROM events WHERE offset > ?", (low,)).fetchone()[0] - 1
                )
                high = min(low + limit, top)
                rows = conn.execute(query, (low, high)).fetchall()
        finally:
            conn.execute("COMMIT")
        return rows, str(high)

    def committed(self, consumer: str) -> Offset | None:
        row = self._conn.execute(
            "SELECT offset FROM consumer_offsets WHERE consumer = ?", (consumer,)
        ).fetchone()
        return None if row is None else str(row[0])

    def commit(self, consumer: str, offset: Offset) -> None:
        self._conn.execute(
            "INSERT INTO consumer_offsets (consumer, offset) VALUES (?, ?)"
            " ON CONFLICT(consumer) DO UPDATE SET offset = excluded.offset",
            (consumer, int(offset)),
        )

    def count_after(self, after: Offset | None) -> int:
        row = self._conn.execute(
            "SELECT count(*) FROM events WHERE offset > ?", (int(after) if after is not None else 0,)
        ).fetchone()
        return int(row[0])

    def trim(self, *, max_age_s: float | None = None, max_len: int | None = None) -> int:
        dropped = 0
        conn = self._conn
        if max_age_s is not None:
            cutoff = int(time.time() * 1000 - max_age_s * 1000)
            dropped += conn.execute("DELETE FROM events WHERE ingest_time < ?", (cutoff,)).rowcount
        if max_len is not None:
            row = conn.execute("SELECT max(offset) FROM events").fetchone()
            if row[0] is not None:
                dropped += conn.execute("DELETE FROM events WHERE offset <= ?", (row[0] - max_len,)).rowcount
        return dropped

    def trim_consumed(self, before_event_ms: int, consumers: Sequence[str]) -> int:
        conn = self._conn
        marks = ", ".join("?" * len(consumers))
        low = conn.execute(
            f"SELECT count(*), min(offset) FROM consumer_offsets WHERE consumer IN ({marks})", tuple(consumers)
        ).fetchone()
        if not consumers or low[0] < len(set(consumers)):
            return 0
        # Scans in offset order and stops at the first kept event: a few ms for an hour's worth.
        keep = conn.execute(
            "SELECT offset FROM events WHERE event_time >= ? ORDER BY offset LIMIT 1", (before_event_ms,)
        ).fetchone()
        upto = low[1] if keep is None else min(low[1], keep[0] - 1)
        dropped = int(conn.execute("DELETE FROM events WHERE offset <= ?", (upto,)).rowcount)
        conn.executescript("PRAGMA incremental_vacuum")  # executescript steps it to the end: all pages
        return dropped

    def stats(self) -> tuple[int, int, int | None]:
        size = sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists())
        rows = int(self._conn.execute("SELECT count(*) FROM events").fetchone()[0])
        first = self._conn.execute("SELECT event_time FROM events ORDER BY offset LIMIT 1").fetchone()
        return size, rows, None if first is None else int(first[0])

    def close(self) -> None:
        self._conn.close()
