"""Storage helpers every part shares: SQLite connections, PostgreSQL connections, counters.

- `sqlite_connect`: WAL (readers never block the writer, a crashed writer leaves the last
  committed transaction) with a busy timeout, so concurrent writers wait instead of failing.
  `synchronous=NORMAL` survives any process crash (kill -9); only an OS crash can lose the last
  transactions. Stores that want an OS crash to lose nothing pass `synchronous="FULL"`.
- `pg_connect`: an autocommit connection with the namespace's schema in place (the tables of
  every part live in the schema named after the namespace, which purge drops whole). It is
  ensured on every connection, not cached per process: a purge in another process (`rtml down
  --purge`) would leave a cache claiming a schema that is gone. Connections are long-lived, so
  this is one statement per store opened.
- `Counters`: a part's persisted running totals (and a few levels), a SQLite table `counters`
  in the embedded profile and a Redis hash `<namespace>:counters:<part>` in the services one,
  chosen by `open_counters(settings, part)`. Adding is atomic: a crash leaves every counter of
  one `add` counted or none.
"""

from __future__ import annotations

import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Self

from rtml.config import Settings

if TYPE_CHECKING:
    import psycopg
    import redis

# Where a part's counters live in the embedded profile: beside the part's own data (a file the
# part opens anyway), else `<data_dir>/counters/<part>.sqlite`.
COUNTER_FILES = {
    "ingest": "ingest.sqlite",
    "serving": "predictions.sqlite",
    "features": "feature_repo/data/counters.sqlite",
}
COUNTERS_DDL = "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value REAL NOT NULL)"


def sqlite_connect(
    path: Path | str,
    *,
    timeout: float = 60,
    synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
    check_same_thread: bool = False,
    auto_vacuum: bool = False,
) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit `BEGIN`s), WAL journal.

    `auto_vacuum=True` (incremental) takes effect only on a new file: a store whose retention
    deletes rows then gives pages back, so the file follows its window, not its peak."""
    conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=check_same_thread)
    if auto_vacuum:
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    return conn


def pg_connect(settings: Settings) -> psycopg.Connection:
    """An autocommit connection to settings.postgres_dsn, with the namespace's schema in place."""
    import psycopg

    conn = psycopg.connect(settings.postgres_dsn, autocommit=True)
    try:
        ensure_schema(conn, settings)
    except BaseException:
        conn.close()
        raise
    return conn


def pg_delete(conn: psycopg.Connection, table: str, sql: str, params: Sequence[object]) -> int:
    """Retention's DELETE on an autocommit connection, then VACUUM of the table when rows went.

    A table that takes rows at one end and loses them at the other grows by its deletes until
    autovacuum reclaims them, which its 20 % threshold puts off for a day of a 5-day window
    (measured: an event log holding 2,420 rows grew 1.0 -> 5.5 MB over 30 simulated days with
    hourly deletes, and stayed at 1.1 MB with a VACUUM after each). A plain VACUUM takes no
    lock that blocks readers or writers; a crash in it leaves the deleted rows deleted."""
    gone = int(conn.execute(sql, params).rowcount)
    if gone:
        conn.execute(f"VACUUM {table}")
    return gone


def ensure_schema(conn: psycopg.Connection, settings: Settings) -> None:
    """Create the namespace's schema unless it exists.

    Two processes creating it at once can both pass `IF NOT EXISTS` and one then hits the
    catalogue's unique index: the schema exists either way, which is all that is asked."""
    import psycopg

    try:
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{settings.namespace}"')
    except psycopg.errors.UniqueViolation:
        pass


class Closeable(ABC):
    """What every store interface shares: `close()` releases what it holds open, and `with`
    closes it (a store opened in a `with` is closed however the block ends)."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Counters(Closeable):
    """A part's persisted counters: running totals (`add`) and levels (`set`), read as floats."""

    @abstractmethod
    def add(self, increments: Mapping[str, float]) -> None:
        """Add to each named total (a missing one starts at 0), all in one atomic step."""

    @abstractmethod
    def set(self, values: Mapping[str, float]) -> None:
        """Overwrite levels (say, the time of the last write), all in one atomic step."""

    @abstractmethod
    def read(self) -> dict[str, float]:
        """Every counter stored, by name."""


class SqliteCounters(Counters):
    """The table `counters` in a SQLite file. Given the connection of a store (`conn=`), an `add`
    inside that store's open transaction commits with it: the store's rows and their counts go
    together or not at all."""

    def __init__(self, path: Path | str | None = None, *, conn: sqlite3.Connection | None = None) -> None:
        if (path is None) == (conn is None):
            raise ValueError("give exactly one of path or conn")
        self._owned = conn is None
        self._db = conn if conn is not None else sqlite_connect(path)  # type: ignore[arg-type]
        self._db.execute(COUNTERS_DDL)

    def _write(self, sql: str, rows: list[tuple[str, float]]) -> None:
        if not rows:
            return
        if self._db.in_transaction:  # the caller's transaction: commits with it
            self._db.executemany(sql, rows)
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(sql, rows)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def add(self, increments: Mapping[str, float]) -> None:
        self._write(
            "INSERT INTO counters (name, value) VALUES (?, ?)"
            " ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            [(k, float(v)) for k, v in increments.items() if v],
        )

    def set(self, values: Mapping[str, float]) -> None:
        self._write("INSERT OR REPLACE INTO counters (name, value) VALUES (?, ?)", [(k, float(v)) for k, v in values.items()])

    def read(self) -> dict[str, float]:
        return {name: float(value) for name, value in self._db.execute("SELECT name, value FROM counters")}

    def close(self) -> None:
        if self._owned:
            self._db.close()


class RedisCounters(Counters):
    """A Redis hash; `add` is one MULTI/EXEC of HINCRBYFLOATs. `queue_add` puts the same commands
    on a caller's transaction pipeline, so they apply with the caller's other writes."""

    def __init__(self, url: str, key: str) -> None:
        import redis

        self._r: redis.Redis = redis.Redis.from_url(url)
        self.key = key

    def queue_add(self, pipe: redis.client.Pipeline, increments: Mapping[str, float]) -> None:
        for name, value in increments.items():
            if value:
                pipe.hincrbyfloat(self.key, name, value)

    def add(self, increments: Mapping[str, float]) -> None:
        with self._r.pipeline(transaction=True) as pipe:
            self.queue_add(pipe, increments)
            if len(pipe):
                pipe.execute()

    def set(self, values: Mapping[str, float]) -> None:
        if values:
            self._r.hset(self.key, mapping={k: repr(float(v)) for k, v in values.items()})

    def read(self) -> dict[str, float]:
        stored = self._r.hgetall(self.key)
        return {k.decode(): float(v) for k, v in stored.items()}  # type: ignore[union-attr]

    def close(self) -> None:
        self._r.close()


def counters_key(settings: Settings, part: str) -> str:
    return f"{settings.namespace}:counters:{part}"


def open_counters(settings: Settings, part: str) -> Counters:
    """The counters of `part` (`ingest`, `serving`, `features`, ...) in the profile's backend."""
    if settings.backend("counters") == "redis":
        return RedisCounters(settings.redis_url, counters_key(settings, part))
    return SqliteCounters(settings.path(COUNTER_FILES.get(part, f"counters/{part}.sqlite")))
