"""The pipeline's event log: drift alerts, rule failures, breaches, alarms, retraining, gate
decisions, promotions. One table, written by every stage, read by the dashboard and the
retraining loop. SQLite under the data directory (embedded) or PostgreSQL (services).

An event's time is event time: the boundary of the scheduled job that records it, else the
pipeline clock (wall time before the first closed minute), so a replay's events sit beside its minutes and retention (by the clock)
ages them like every other store.

An event may carry a `key` (unique): a job that the scheduler re-runs after a crash records
the same keyed event again, and the second record is a no-op, so the log says it once.

Services, PostgreSQL down: events wait in the local spool (rtml.spool), each with a key, and
reach the table at the next record or read (or the scheduler's next poll), in the order they
were recorded; their ids are given then (`time_ms` is still when they happened).
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rtml.config import Settings
from rtml.spool import PgLink, Record, Spool, unreachable

if TYPE_CHECKING:
    import psycopg


@dataclass(frozen=True)
class Event:
    id: int
    time_ms: int
    kind: str
    details: dict[str, Any]


class EventLog:
    """Append-only event log; `kind` is a short dotted name such as `drift.alert` or `model.promoted`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._services = settings.profile == "services"
        if self._services:
            self._table = f'"{settings.namespace}".events'
            self._link = PgLink(settings.postgres_dsn, self._create)
            self._spool = Spool(settings, "events")
        else:
            self._db = sqlite3.connect(settings.path("events.sqlite"), timeout=30, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS events "
                "(id INTEGER PRIMARY KEY AUTOINCREMENT, time_ms INTEGER NOT NULL, kind TEXT NOT NULL, details TEXT NOT NULL)"
            )
            if "key" not in {row[1] for row in self._db.execute("PRAGMA table_info(events)")}:
                self._db.execute("ALTER TABLE events ADD COLUMN key TEXT")
            self._db.execute("CREATE UNIQUE INDEX IF NOT EXISTS events_key ON events (key)")

    def record(self, kind: str, time_ms: int | None = None, key: str | None = None, **details: Any) -> bool:
        """Append an event; False when an event with the same `key` is already there (nothing written).

        Services: an event PostgreSQL cannot take is spooled (True: it will be written once)
        and the spool is drained, oldest first, before the next event; every event carries a
        key there (`auto:<uuid>` when none was given), which makes the drain exactly-once.
        """
        when = _clock_ms(self.settings) if time_ms is None else time_ms
        payload = json.dumps(details, default=str)
        if self._services:
            record = (key or f"auto:{uuid.uuid4().hex}", json.dumps([when, kind, payload]))
            try:
                self._spool.drain(self._write)
                return self._write([record]) > 0
            except Exception as exc:
                if not unreachable(exc):
                    raise
                self._spool.put([record])
                return True
        return bool(
            self._db.execute(
                "INSERT INTO events (time_ms, kind, details, key) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (when, kind, payload, key),
            ).rowcount
        )

    def _create(self, conn: psycopg.Connection) -> None:
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.settings.namespace}"')
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {self._table} "
            "(id BIGSERIAL PRIMARY KEY, time_ms BIGINT NOT NULL, kind TEXT NOT NULL, details JSONB NOT NULL)"
        )
        conn.execute(f"ALTER TABLE {self._table} ADD COLUMN IF NOT EXISTS key TEXT")
        conn.execute(f"CREATE UNIQUE INDEX IF NOT EXISTS events_key ON {self._table} (key)")

    def _write(self, records: list[Record]) -> int:
        """Insert (key, [time_ms, kind, details]) records in one transaction; how many were new."""
        conn = self._link.conn
        new = 0
        with conn.transaction(), conn.cursor() as cur:
            for key, doc in records:
                when, kind, payload = json.loads(doc)
                cur.execute(
                    f"INSERT INTO {self._table} (time_ms, kind, details, key) VALUES (%s, %s, %s::jsonb, %s) "
                    "ON CONFLICT DO NOTHING",
                    (when, kind, payload, key),
                )
                new += cur.rowcount
        return new

    def flush(self) -> int:
        """Services: write what the spool holds (when PostgreSQL answers); how many were written."""
        return self._spool.drain(self._write) if self._services else 0

    @property
    def _pg(self) -> psycopg.Connection:
        """The connection for reads, which see spooled events: the spool is drained first."""
        self._spool.drain(self._write)
        return self._link.conn

    def find(self, key: str) -> Event | None:
        """The event recorded with this key, or None."""
        if self._services:
            row = self._pg.execute(
                f"SELECT id, time_ms, kind, details::text FROM {self._table} WHERE key = %s", (key,)
            ).fetchone()
        else:
            row = self._db.execute("SELECT id, time_ms, kind, details FROM events WHERE key = ?", (key,)).fetchone()
        return None if row is None else Event(row[0], row[1], row[2], json.loads(row[3]))

    def count(self, kind: str) -> int:
        """How many events of exactly this kind."""
        sql = f"SELECT count(*) FROM {self._table if self._services else 'events'} WHERE kind = ?"
        if self._services:
            row = self._pg.execute(sql.replace("?", "%s"), (kind,)).fetchone()
        else:
            row = self._db.execute(sql, (kind,)).fetchone()
        return int(row[0]) if row else 0

    def recent(self, limit: int = 200, prefix: str = "", after_id: int = 0) -> list[Event]:
        """Newest last; `prefix` filters kinds (`drift.` for all drift events)."""
        if self._services:
            rows = self._pg.execute(
                f"SELECT id, time_ms, kind, details::text FROM {self._table} "
                "WHERE kind LIKE %s AND id > %s ORDER BY id DESC LIMIT %s",
                (prefix + "%", after_id, limit),
            ).fetchall()
        else:
            rows = self._db.execute(
                "SELECT id, time_ms, kind, details FROM events WHERE kind LIKE ? AND id > ? ORDER BY id DESC LIMIT ?",
                (prefix + "%", after_id, limit),
            ).fetchall()
        return [Event(r[0], r[1], r[2], json.loads(r[3])) for r in reversed(rows)]

    def trim(self, before_ms: int) -> int:
        """Retention: drop events older than `before_ms`; returns how many went."""
        if self._services:
            return int(self._pg.execute(f"DELETE FROM {self._table} WHERE time_ms < %s", (before_ms,)).rowcount)
        return int(self._db.execute("DELETE FROM events WHERE time_ms < ?", (before_ms,)).rowcount)

    def stats(self) -> tuple[int, int, int | None]:
        """(bytes, events, time of the oldest in ms or None): for `rtml status`."""
        if self._services:
            row = self._pg.execute(
                f"SELECT count(*), min(time_ms), pg_total_relation_size(%s) FROM {self._table}", (self._table,)
            ).fetchone()
            assert row is not None
            return int(row[2]), int(row[0]), row[1]
        rows, oldest = self._db.execute("SELECT count(*), min(time_ms) FROM events").fetchone()
        path = self.settings.root / "events.sqlite"
        size = sum(p.stat().st_size for p in (path, path.with_name("events.sqlite-wal")) if p.exists())
        return size, int(rows), oldest

    def close(self) -> None:
        if self._services:
            self._link.close()
            self._spool.close()
        else:
            self._db.close()


def _clock_ms(settings: Settings) -> int:
    """The boundary of the scheduled job recording, else the pipeline clock, else wall time."""
    from rtml.aggregate.clock import current_boundary, pipeline_clock

    boundary = current_boundary.get()
    if boundary is not None:
        return boundary
    clock = pipeline_clock(settings)
    return int(time.time() * 1000) if clock is None else int(clock.timestamp() * 1000)
