"""A local durable spool: what a PostgreSQL store could not take waits here until it answers.

In the services profile the offline minutes, the event log and the prediction log live in
PostgreSQL, which restarts, fails over, goes away for a minute. A writer that cannot reach it
puts the records in `<data_dir>/spool/spool.sqlite` (one table per store, each record with the
key its store's write is idempotent on) and returns: the pipeline goes on. The next write to
that store (and every scheduler poll) first drains the spool, oldest first, through the store's
own idempotent write (ON CONFLICT on that key), and deletes a batch only once it is written.

What a crash leaves behind:
- between the store's write and the spool's delete: those records are written again by the
  next drain, which their key makes a no-op (nothing is written twice);
- while spooling: SQLite commits the batch whole or not at all; not at all is as if the writer
  had died before its write (the caller never got its return).

Nothing grows without bound: a store keeps at most `spool.max_records` records (past it the
oldest go) and none older than `spool.max_age_s`; both losses are counted (`dropped`) and shown
by `rtml status`. Embedded stores are local files that do not go away: they never spool.
"""

from __future__ import annotations

import fcntl
import logging
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from rtml.config import Settings
from rtml.outage import absorbed, restored

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

Record = tuple[str, str]  # (key, payload)
# Records per store transaction of a drain; each batch is deleted from the spool once written.
DRAIN_BATCH = 500
_COUNTERS = "CREATE TABLE IF NOT EXISTS dropped (store TEXT PRIMARY KEY, n INTEGER NOT NULL)"


def unreachable(exc: BaseException) -> bool:
    """Whether `exc`, or what caused it, says a service could not be reached (down, restarting,
    connection cut), rather than that the request itself was wrong: the one failure worth waiting out."""
    import psycopg

    kinds: list[type[BaseException]] = [psycopg.OperationalError, ConnectionError]
    if "sqlalchemy" in sys.modules:  # MLflow's registry; wrapped in MlflowException (the cause)
        import sqlalchemy.exc

        kinds += [sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError]
    if "redis" in sys.modules:
        import redis.exceptions

        kinds += [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError]
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, tuple(kinds)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class Unsettled(ConnectionError):
    """Records still wait in the spool: the store is not complete yet (retry once it drained)."""


class PgLink:
    """One autocommit connection, opened at first use and opened again after the server went
    away (a restart breaks every open connection for good); `setup` runs on each new one."""

    def __init__(self, dsn: str, setup: Callable[[psycopg.Connection], None] | None = None) -> None:
        self.dsn = dsn
        self.setup = setup
        self._conn: psycopg.Connection | None = None

    @property
    def conn(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            import psycopg

            if self._conn is not None:
                self._conn.close()
            conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)
            try:
                if self.setup is not None:
                    self.setup(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class Spool:
    """The spooled records of one store (`store` names its table): put, drain, count."""

    def __init__(self, settings: Settings, store: str) -> None:
        self.path = settings.path("spool", "spool.sqlite")
        self.store = store
        self.max_records = settings.spool.max_records
        self.max_age_ms = int(settings.spool.max_age_s * 1000)
        self._db: sqlite3.Connection | None = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                f'CREATE TABLE IF NOT EXISTS "{self.store}" (seq INTEGER PRIMARY KEY AUTOINCREMENT,'
                " key TEXT NOT NULL UNIQUE, payload TEXT NOT NULL, spooled_ms INTEGER NOT NULL)"
            )
            self._db.execute(_COUNTERS)
        return self._db

    def put(self, records: Sequence[Record], now_ms: int | None = None) -> int:
        """Spool records (a key already spooled is replaced); returns how many were
        dropped to keep the bound (the oldest first)."""
        if not records:
            return 0
        now = int(time.time() * 1000) if now_ms is None else now_ms
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                # a key spooled again goes to the end with its new payload (a drain in flight
                # deletes by sequence number, so it never deletes the newer payload unwritten)
                f'INSERT OR REPLACE INTO "{self.store}" (key, payload, spooled_ms) VALUES (?, ?, ?)',
                [(key, payload, now) for key, payload in records],
            )
            gone = self._trim(now)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        absorbed("postgres", self.store, f"{len(records)} {self.store} records spooled")  # status, service.down
        return gone

    def _trim(self, now_ms: int) -> int:
        """Retention and bound, inside the caller's transaction; counts what goes."""
        db = self.db
        gone = db.execute(f'DELETE FROM "{self.store}" WHERE spooled_ms < ?', (now_ms - self.max_age_ms,)).rowcount
        over = len(self) - self.max_records
        if over > 0:
            gone += db.execute(
                f'DELETE FROM "{self.store}" WHERE seq IN (SELECT seq FROM "{self.store}" ORDER BY seq LIMIT ?)',
                (over,),
            ).rowcount
        if gone:
            log.warning("spool %s: %d records dropped (older than spool.max_age_s or past spool.max_records)",
                        self.store, gone)  # fmt: skip
            self._count_dropped(gone)
        return int(gone)

    def __len__(self) -> int:
        return int(self.db.execute(f'SELECT count(*) FROM "{self.store}"').fetchone()[0])

    def pending(self) -> bool:
        """Cheap: whether anything waits (no file: nothing ever did)."""
        return (self._db is not None or self.path.exists()) and len(self) > 0

    def records(self) -> list[Record]:
        """Everything spooled, oldest first (bounded by `max_records`)."""
        return list(self.db.execute(f'SELECT key, payload FROM "{self.store}" ORDER BY seq'))

    def dropped(self) -> int:
        row = self.db.execute("SELECT n FROM dropped WHERE store = ?", (self.store,)).fetchone()
        return 0 if row is None else int(row[0])

    @contextmanager
    def _drainer(self) -> Iterator[bool]:
        """One drainer per store at a time (others skip: it would write the same records)."""
        with open(self.path.with_name(f"{self.store}.lock"), "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def drain(self, write: Callable[[list[Record]], object], batch: int | None = None) -> int:
        """Hand the spooled records to `write` (the store's idempotent write), oldest first, in
        batches; each batch is deleted once `write` returned. The store being unreachable
        propagates and leaves the rest spooled. Returns how many were handed over (0 when
        another process is draining this store)."""
        if not self.pending():
            restored("postgres", self.store)  # (another process drained it)
            return 0
        written = 0
        with self._drainer() as mine:
            if not mine:
                return 0
            self._trim(int(time.time() * 1000))
            while True:
                rows = self.db.execute(
                    f'SELECT seq, key, payload FROM "{self.store}" ORDER BY seq LIMIT ?', (batch or DRAIN_BATCH,)
                ).fetchall()
                if not rows:
                    restored("postgres", self.store)  # status, service.up
                    return written
                self._write(write, [(key, payload) for _, key, payload in rows])
                self.db.execute(f'DELETE FROM "{self.store}" WHERE seq <= ?', (rows[-1][0],))
                written += len(rows)

    def _write(self, write: Callable[[list[Record]], object], records: list[Record]) -> None:
        """A batch the store refuses for a reason other than being unreachable is written one by
        one: a record the store will never take is dropped (counted, logged), not retried forever."""
        try:
            write(records)
            return
        except Exception as exc:
            if unreachable(exc) or len(records) == 1:
                if unreachable(exc):
                    raise
                log.error("spool %s: record %s refused for good, dropped: %s", self.store, records[0][0], exc)
                self._count_dropped(1)
                return
        for record in records:
            self._write(write, [record])

    def _count_dropped(self, n: int) -> None:
        self.db.execute(
            "INSERT INTO dropped VALUES (?, ?) ON CONFLICT(store) DO UPDATE SET n = n + excluded.n", (self.store, n)
        )

    def settle(self, write: Callable[[list[Record]], object]) -> None:
        """Drain, and raise `Unsettled` (which `unreachable` counts) if anything is still spooled:
        what a reader that must see every record (monitoring judging an hour) calls first."""
        self.drain(write)
        if self.pending():
            raise Unsettled(f"{len(self)} {self.store} records still wait in the spool for PostgreSQL")

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def spool_stats(settings: Settings) -> dict[str, dict[str, int]]:
    """Store -> {records, dropped}: what waits for PostgreSQL, for `rtml status`."""
    path = settings.root / "spool" / "spool.sqlite"
    if not path.exists():
        return {}
    with sqlite3.connect(path, timeout=30) as db:
        db.execute(_COUNTERS)
        stores = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        dropped = dict(db.execute("SELECT store, n FROM dropped").fetchall())
        return {
            s: {"records": int(db.execute(f'SELECT count(*) FROM "{s}"').fetchone()[0]), "dropped": dropped.get(s, 0)}
            for s in stores
            if s not in ("dropped", "sqlite_sequence")
        }
