"""The pipeline's event log: drift alerts, rule failures, breaches, alarms, retraining, gate
decisions, promotions. One table, written by every stage, read by the dashboard and the
retraining loop. SQLite under the data directory (embedded, `SqliteEventLog`) or PostgreSQL
(services, `PostgresEventLog`), behind one interface (`EventBackend`) chosen by
`open_event_log` (`EventLog(settings)` is the same).

An event's time is event time: the boundary of the scheduled job that records it, else the
pipeline clock (wall time before the first closed minute), so a replay's events sit beside its minutes and retention (by the clock)
ages them like every other store.

An event may carry a `key` (unique): a job that the scheduler re-runs after a crash records
the same keyed event again, and the second record is a no-op, so the log says it once.

Services, PostgreSQL down: events wait in the local spool (rtml.spool), each with a key, and
reach the table at the next record or read (or the scheduler's next poll), in the order they
were recorded; their ids are given then (`time_ms` is still when they happened).

Importing this module makes it where the outage reporter (rtml.outage) records `service.down`
and `service.up`: the reporter is shared and imports no part.
"""

from __future__ import annotations

import json
import time
import uuid
from abc import abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rtml.config import Settings
from rtml.outage import record_events_with
from rtml.spool import PgLink, Record, Spool, unreachable
from rtml.storage import Closeable, ensure_schema, pg_delete, sqlite_connect

if TYPE_CHECKING:
    import psycopg


@dataclass(frozen=True)
class Event:
    id: int
    time_ms: int
    kind: str
    details: dict[str, Any]


class EventBackend(Closeable):
    """Append-only event log; `kind` is a short dotted name such as `drift.alert` or `model.promoted`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def record(self, kind: str, time_ms: int | None = None, key: str | None = None, **details: Any) -> bool:
        """Append an event; False when an event with the same `key` is already there (nothing written)."""
        when = _clock_ms(self.settings) if time_ms is None else time_ms
        return self._record(when, kind, json.dumps(details, default=str), key)

    @abstractmethod
    def _record(self, time_ms: int, kind: str, details: str, key: str | None) -> bool:
        """Append one event (details as JSON); False when its key is there already."""

    def flush(self) -> int:
        """Write what waits to be written (services: the spool); how many were written."""
        return 0

    @abstractmethod
    def find(self, key: str) -> Event | None:
        """The event recorded with this key, or None."""

    @abstractmethod
    def count(self, kind: str) -> int:
        """How many events of exactly this kind."""

    @abstractmethod
    def recent(self, limit: int = 200, prefix: str = "", after_id: int = 0) -> list[Event]:
        """Newest last; `prefix` filters kinds (`drift.` for all drift events)."""

    @abstractmethod
    def trim(self, before_ms: int) -> int:
        """Retention: drop events older than `before_ms`; returns how many went."""

    @abstractmethod
    def stats(self) -> tuple[int, int, int | None]:
        """(bytes, events, time of the oldest in ms or None): for `rtml status`."""


class SqliteEventLog(EventBackend):
    """`<data_dir>/events.sqlite`; the unique index on `key` makes a keyed record idempotent."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._path = settings.path("events.sqlite")
        self._db = sqlite_connect(self._path, timeout=30, synchronous="FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS events "
            "(id INTEGER PRIMARY KEY AUTOINCREMENT, time_ms INTEGER NOT NULL, kind TEXT NOT NULL, details TEXT NOT NULL)"
        )
        if "key" not in {row[1] for row in self._db.execute("PRAGMA table_info(events)")}:
            self._db.execute("ALTER TABLE events ADD COLUMN key TEXT")
        self._db.execute("CREATE UNIQUE INDEX IF NOT EXISTS events_key ON events (key)")

    def _record(self, time_ms: int, kind: str, details: str, key: str | None) -> bool:
        return bool(
            self._db.execute(
                "INSERT INTO events (time_ms, kind, details, key) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (time_ms, kind, details, key),
            ).rowcount
        )

    def find(self, key: str) -> Event | None:
        row = self._db.execute("SELECT id, time_ms, kind, details FROM events WHERE key = ?", (key,)).fetchone()
        return None if row is None else Event(row[0], row[1], row[2], json.loads(row[3]))

    def count(self, kind: str) -> int:
        row = self._db.execute("SELECT count(*) FROM events WHERE kind = ?", (kind,)).fetchone()
        return int(row[0]) if row else 0

    def recent(self, limit: int = 200, prefix: str = "", after_id: int = 0) -> list[Event]:
        rows = self._db.execute(
            "SELECT id, time_ms, kind, details FROM events WHERE kind LIKE ? AND id > ? ORDER BY id DESC LIMIT ?",
            (prefix + "%", after_id, limit),
        ).fetchall()
        return [Event(r[0], r[1], r[2], json.loads(r[3])) for r in reversed(rows)]

    def trim(self, before_ms: int) -> int:
        return int(self._db.execute("DELETE FROM events WHERE time_ms < ?", (before_ms,)).rowcount)

    def stats(self) -> tuple[int, int, int | None]:
        rows, oldest = self._db.execute("SELECT count(*), min(time_ms) FROM events").fetchone()
        size = sum(p.stat().st_size for p in (self._path, self._path.with_name("events.sqlite-wal")) if p.exists())
        return size, int(rows), oldest

    def close(self) -> None:
        self._db.close()


class PostgresEventLog(EventBackend):
    """The table `events` in the namespace's schema, with the spool `events` for an outage."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._table = f'"{settings.namespace}".events'
        self._link = PgLink(settings.postgres_dsn, self._create)
        self._spool = Spool(settings, "events")

    def _create(self, conn: psycopg.Connection) -> None:
        ensure_schema(conn, self.settings)
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {self._table} "
            "(id BIGSERIAL PRIMARY KEY, time_ms BIGINT NOT NULL, kind TEXT NOT NULL, details JSONB NOT NULL)"
        )
        conn.execute(f"ALTER TABLE {self._table} ADD COLUMN IF NOT EXISTS key TEXT")
        conn.execute(f"CREATE UNIQUE INDEX IF NOT EXISTS events_key ON {self._table} (key)")

    def _record(self, time_ms: int, kind: str, details: str, key: str | None) -> bool:
        """An event PostgreSQL cannot take is spooled (True: it will be written once) and the
        spool is drained, oldest first, before the next event; every event carries a key here
        (`auto:<uuid>` when none was given), which makes the drain exactly-once."""
        record = (key or f"auto:{uuid.uuid4().hex}", json.dumps([time_ms, kind, details]))
        try:
            self._spool.drain(self._write)
            return self._write([record]) > 0
        except Exception as exc:
            if not unreachable(exc):
                raise
            self._spool.put([record])
            return True

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
        """Write what the spool holds (when PostgreSQL answers); how many were written."""
        return self._spool.drain(self._write)

    @property
    def _pg(self) -> psycopg.Connection:
        """The connection for reads, which see spooled events: the spool is drained first."""
        self._spool.drain(self._write)
        return self._link.conn

    def find(self, key: str) -> Event | None:
        row = self._pg.execute(
            f"SELECT id, time_ms, kind, details::text FROM {self._table} WHERE key = %s", (key,)
        ).fetchone()
        return None if row is None else Event(row[0], row[1], row[2], json.loads(row[3]))

    def count(self, kind: str) -> int:
        row = self._pg.execute(f"SELECT count(*) FROM {self._table} WHERE kind = %s", (kind,)).fetchone()
        return int(row[0]) if row else 0

    def recent(self, limit: int = 200, prefix: str = "", after_id: int = 0) -> list[Event]:
        rows = self._pg.execute(
            f"SELECT id, time_ms, kind, details::text FROM {self._table} "
            "WHERE kind LIKE %s AND id > %s ORDER BY id DESC LIMIT %s",
            (prefix + "%", after_id, limit),
        ).fetchall()
        return [Event(r[0], r[1], r[2], json.loads(r[3])) for r in reversed(rows)]

    def trim(self, before_ms: int) -> int:
        return pg_delete(self._pg, self._table, f"DELETE FROM {self._table} WHERE time_ms < %s", (before_ms,))

    def stats(self) -> tuple[int, int, int | None]:
        row = self._pg.execute(
            f"SELECT count(*), min(time_ms), pg_total_relation_size(%s) FROM {self._table}", (self._table,)
        ).fetchone()
        assert row is not None
        return int(row[2]), int(row[0]), row[1]

    def close(self) -> None:
        self._link.close()
        self._spool.close()


_BACKENDS: dict[str, type[EventBackend]] = {"sqlite": SqliteEventLog, "postgres": PostgresEventLog}


def open_event_log(settings: Settings) -> EventBackend:
    """The event log of the settings' profile."""
    return _BACKENDS[settings.backend("events")](settings)


# The name every part opens the log by (`EventLog(settings)`).
EventLog = open_event_log


def _clock_ms(settings: Settings) -> int:
    """The boundary of the scheduled job recording, else the pipeline clock, else wall time."""
    from rtml.aggregate.clock import current_boundary, pipeline_clock

    boundary = current_boundary.get()
    if boundary is not None:
        return boundary
    clock = pipeline_clock(settings)
    return int(time.time() * 1000) if clock is None else int(clock.timestamp() * 1000)


record_events_with(open_event_log)
