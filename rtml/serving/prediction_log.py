"""The prediction log: every forecast the API gives, for the monitoring stage to score later.

A request only appends to an in-memory queue; one writer thread drains it in batches, so a
slow disk or a PostgreSQL round trip never sits on the request path. The same thread flushes
the serving counters. Embedded: `<data_dir>/predictions.sqlite`. Services: the table
`predictions` in the schema `settings.namespace`, counters in the Redis hash
`{namespace}:counters:serving`.

Kinds: the pipeline's own forecast of every closed minute is `pipeline` (written by the
scheduler, at most one per target minute: a unique index makes a re-run after a crash a
no-op); callers' forecasts are `online`, `batch` and `what-if`. Only `pipeline` is judged.

Services, PostgreSQL down: records wait in the local spool (rtml.spool) with a `rid` each
(unique in the table), drained before the next write: nothing lost, nothing twice. Monitoring
reads (`read_judged`) refuse while forecasts are still spooled rather than judge an hour on
part of them.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sqlite3
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import astuple, dataclass
from typing import TYPE_CHECKING

from rtml.config import Settings
from rtml.spool import PgLink, Record, Spool, unreachable

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

PIPELINE_KIND = "pipeline"
JUDGED_KINDS = (PIPELINE_KIND,)

COLUMNS = (
    "logged_ms",
    "model_version",
    "feature_time_ms",
    "target_minute_ms",
    "p10",
    "p50",
    "p90",
    "latency_ms",
    "kind",
)
_SQLITE_DDL = (
    "CREATE TABLE IF NOT EXISTS predictions (id INTEGER PRIMARY KEY AUTOINCREMENT, logged_ms INTEGER NOT NULL, "
    "model_version TEXT NOT NULL, feature_time_ms INTEGER NOT NULL, target_minute_ms INTEGER NOT NULL, "
    "p10 REAL NOT NULL, p50 REAL NOT NULL, p90 REAL NOT NULL, latency_ms REAL NOT NULL, kind TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS predictions_target ON predictions (target_minute_ms)",
    "CREATE UNIQUE INDEX IF NOT EXISTS predictions_pipeline ON predictions (target_minute_ms) WHERE kind = 'pipeline'",
    "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value REAL NOT NULL)",
)
_PG_COLUMNS = (
    "id BIGSERIAL PRIMARY KEY, logged_ms BIGINT NOT NULL, model_version TEXT NOT NULL, "
    "feature_time_ms BIGINT NOT NULL, target_minute_ms BIGINT NOT NULL, p10 DOUBLE PRECISION NOT NULL, "
    "p50 DOUBLE PRECISION NOT NULL, p90 DOUBLE PRECISION NOT NULL, latency_ms DOUBLE PRECISION NOT NULL, "
    "kind TEXT NOT NULL"
)


@dataclass(frozen=True, slots=True)
class PredictionRecord:
    """One logged forecast. `kind` is `pipeline` (the scheduler), `online` (GET /forecast), `what-if` or `batch` (POST)."""

    logged_ms: int
    model_version: str
    feature_time_ms: int
    target_minute_ms: int
    p10: float
    p50: float
    p90: float
    latency_ms: float
    kind: str


class PredictionStore:
    """Where records and counters land; used only by the writer thread (and by readers)."""

    def __init__(self, settings: Settings) -> None:
        self.services = settings.profile == "services"
        self.namespace = settings.namespace
        if self.services:
            import redis

            self.table = f'"{settings.namespace}".predictions'
            self.link = PgLink(settings.postgres_dsn, self._create)
            self.spool = Spool(settings, "predictions")
            self.redis = redis.Redis.from_url(settings.redis_url)
            self.counters_key = f"{settings.namespace}:counters:serving"
        else:
            self.db = sqlite3.connect(
                settings.path("predictions.sqlite"), timeout=30, isolation_level=None, check_same_thread=False
            )
            self.db.execute("PRAGMA journal_mode=WAL")
            for ddl in _SQLITE_DDL:
                self.db.execute(ddl)

    @property
    def pg(self) -> psycopg.Connection:
        return self.link.conn

    def _create(self, conn: psycopg.Connection) -> None:
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.namespace}"')
        conn.execute(f"CREATE TABLE IF NOT EXISTS {self.table} ({_PG_COLUMNS})")
        conn.execute(f"ALTER TABLE {self.table} ADD COLUMN IF NOT EXISTS rid TEXT")
        conn.execute(f"CREATE INDEX IF NOT EXISTS predictions_target ON {self.table} (target_minute_ms)")
        conn.execute(
            f"CREATE UNIQUE INDEX IF NOT EXISTS predictions_pipeline ON {self.table} (target_minute_ms) "
            "WHERE kind = 'pipeline'"
        )
        conn.execute(f"CREATE UNIQUE INDEX IF NOT EXISTS predictions_rid ON {self.table} (rid)")

    def write(self, records: list[PredictionRecord], counts: Mapping[str, float]) -> None:
        """Append records (a pipeline forecast whose target minute is logged already is skipped).

        Services: each record gets a unique `rid` before its first try, so a retry (from the
        spool, after PostgreSQL came back) writes it once; records PostgreSQL cannot take are
        spooled, and the spool is drained first at every write.
        """
        if self.services:
            if records:
                spooled = [(uuid.uuid4().hex, json.dumps(astuple(r))) for r in records]
                try:
                    self.spool.drain(self._write_pg)
                    self._write_pg(spooled)
                except Exception as exc:
                    if not unreachable(exc):
                        raise
                    self.spool.put(spooled)
            if counts:
                pipe = self.redis.pipeline()
                for name, value in counts.items():
                    pipe.hincrbyfloat(self.counters_key, name, value)
                pipe.execute()
            return
        rows = [astuple(r) for r in records]
        with self.db:
            self.db.execute("BEGIN")
            if rows:
                self.db.executemany(
                    f"INSERT INTO predictions ({', '.join(COLUMNS)}) VALUES ({', '.join(['?'] * len(COLUMNS))})"
                    " ON CONFLICT DO NOTHING",
                    rows,
                )
            for name, value in counts.items():
                self.db.execute(
                    "INSERT INTO counters (name, value) VALUES (?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                    (name, value),
                )

    def _write_pg(self, records: list[Record]) -> None:
        """(rid, record as JSON) into PostgreSQL in one transaction; a rid or a pipeline target
        minute already there is skipped (ON CONFLICT DO NOTHING)."""
        conn = self.pg
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO {self.table} ({', '.join(COLUMNS)}, rid) VALUES ({', '.join(['%s'] * (len(COLUMNS) + 1))})"
                " ON CONFLICT DO NOTHING",
                [(*json.loads(doc), rid) for rid, doc in records],
            )

    def settle(self) -> None:
        """Services: drain the spool, or raise `Unsettled` while forecasts still wait in it."""
        if self.services:
            self.spool.settle(self._write_pg)

    def _query(self, sql: str, params: tuple) -> list[tuple]:
        if self.services:
            return self.pg.execute(sql.format(table=self.table).replace("?", "%s"), params).fetchall()
        return self.db.execute(sql.format(table="predictions"), params).fetchall()

    def read(self, since_ms: int, limit: int) -> list[PredictionRecord]:
        sql = f"SELECT {', '.join(COLUMNS)} FROM {{table}} WHERE logged_ms >= ? ORDER BY id LIMIT ?"
        return [PredictionRecord(*row) for row in self._query(sql, (since_ms, limit))]

    def read_targets(self, kinds: tuple[str, ...], start_ms: int, end_ms: int) -> list[PredictionRecord]:
        """Records of these kinds whose target minute is in [start_ms, end_ms), oldest logged first."""
        marks = ", ".join("?" * len(kinds))
        sql = (
            f"SELECT {', '.join(COLUMNS)} FROM {{table}} WHERE kind IN ({marks}) "
            "AND target_minute_ms >= ? AND target_minute_ms < ? ORDER BY id"
        )
        return [PredictionRecord(*row) for row in self._query(sql, (*kinds, start_ms, end_ms))]

    def count(self, kind: str) -> int:
        return int(self._query("SELECT count(*) FROM {table} WHERE kind = ?", (kind,))[0][0])

    def newest_target_ms(self, kind: str) -> int | None:
        row = self._query("SELECT max(target_minute_ms) FROM {table} WHERE kind = ?", (kind,))[0]
        return None if row[0] is None else int(row[0])

    def trim(self, kinds: tuple[str, ...], before_ms: int, exclude: bool = False) -> int:
        """Retention: drop records of these kinds (or of all others, `exclude`) whose target minute
        is before `before_ms`."""
        marks = ", ".join("?" * len(kinds))
        sql = f"DELETE FROM {{table}} WHERE kind {'NOT ' if exclude else ''}IN ({marks}) AND target_minute_ms < ?"
        if self.services:
            return int(self.pg.execute(sql.format(table=self.table).replace("?", "%s"), (*kinds, before_ms)).rowcount)
        return int(self.db.execute(sql.format(table="predictions"), (*kinds, before_ms)).rowcount)

    def stats(self, kinds: tuple[str, ...], exclude: bool = False) -> tuple[int, int, int | None]:
        """(bytes, rows, oldest target minute) of these kinds (or of all others, `exclude`); the
        table's bytes are shared out by rows."""
        marks = ", ".join("?" * len(kinds))
        where = f"kind {'NOT ' if exclude else ''}IN ({marks})"
        rows, oldest = self._query(f"SELECT count(*), min(target_minute_ms) FROM {{table}} WHERE {where}", kinds)[0]
        total = max(1, int(self._query("SELECT count(*) FROM {table}", ())[0][0]))
        if self.services:
            size = int(self.pg.execute("SELECT pg_total_relation_size(%s)", (self.table,)).fetchone()[0])  # type: ignore[index]
        else:
            path = self.db.execute("PRAGMA database_list").fetchone()[2]
            size = sum(os.path.getsize(p) for p in (path, f"{path}-wal") if os.path.exists(p))
        return size * int(rows) // total, int(rows), None if oldest is None else int(oldest)

    def counters(self) -> dict[str, float]:
        if self.services:
            raw = self.redis.hgetall(self.counters_key)
            return {k.decode(): float(v) for k, v in raw.items()}  # type: ignore[union-attr]
        return {name: float(value) for name, value in self.db.execute("SELECT name, value FROM counters")}

    def close(self) -> None:
        if self.services:
            self.link.close()
            self.spool.close()
            self.redis.close()
        else:
            self.db.close()


class PredictionLog:
    """Append forecasts and count events without blocking; a writer thread persists them in batches."""

    def __init__(self, settings: Settings, flush_interval_s: float = 0.2) -> None:
        self._store = PredictionStore(settings)
        self._queue: queue.SimpleQueue[PredictionRecord | None] = queue.SimpleQueue()
        self._counts: defaultdict[str, float] = defaultdict(float)
        self._counts_lock = threading.Lock()
        self._flush_interval_s = flush_interval_s
        self._pending = 0
        self._idle = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def record(self, record: PredictionRecord) -> None:
        with self._idle:
            self._pending += 1
        self._queue.put(record)

    def count(self, name: str, value: float = 1.0) -> None:
        """Add to a persisted counter (`serving_counters` reads them back)."""
        with self._counts_lock:
            self._counts[name] += value

    def flush(self, timeout_s: float = 10.0) -> None:
        """Wait until every record given so far is written (tests, shutdown)."""
        deadline = time.monotonic() + timeout_s
        with self._idle:
            while self._pending and time.monotonic() < deadline:
                self._idle.wait(deadline - time.monotonic())
            if self._pending:
                raise TimeoutError(f"{self._pending} predictions still unwritten after {timeout_s} s")

    def read(self, since_ms: int = 0, limit: int = 100_000) -> list[PredictionRecord]:
        """Records logged at or after `since_ms`, oldest first (written ones only: call flush first)."""
        return self._store.read(since_ms, limit)

    def counters(self) -> dict[str, float]:
        return self._store.counters()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)
        self._store.close()

    def _run(self) -> None:
        stop = False
        while not stop:
            batch: list[PredictionRecord] = []
            try:
                item = self._queue.get(timeout=self._flush_interval_s)
                while True:
                    if item is None:
                        stop = True
                        break
                    batch.append(item)
                    item = self._queue.get_nowait()
            except queue.Empty:
                pass
            with self._counts_lock:
                counts, self._counts = self._counts, defaultdict(float)
            if batch or counts:
                try:
                    self._store.write(batch, counts)
                except Exception:  # the log must never take the API down; the loss is logged
                    # (PostgreSQL down is no loss: the store spools; this is anything else)
                    log.exception("prediction log: %d records and counters lost", len(batch))
            if batch:
                with self._idle:
                    self._pending -= len(batch)
                    self._idle.notify_all()


def read_predictions(settings: Settings, since_ms: int = 0, limit: int = 100_000) -> list[PredictionRecord]:
    """The logged forecasts (for monitoring), oldest first."""
    store = PredictionStore(settings)
    try:
        return store.read(since_ms, limit)
    finally:
        store.close()


def read_judged(settings: Settings, start_ms: int, end_ms: int) -> list[PredictionRecord]:
    """The forecasts monitoring judges (the pipeline's own) with a target minute in [start_ms, end_ms).

    Services: never while forecasts wait in the spool (`Unsettled`, which the scheduler waits
    out): an hour judged without them would be judged on a part of its forecasts.
    """
    store = PredictionStore(settings)
    try:
        store.settle()
        return store.read_targets(JUDGED_KINDS, start_ms, end_ms)
    finally:
        store.close()


def count_predictions(settings: Settings, kind: str = PIPELINE_KIND) -> int:
    store = PredictionStore(settings)
    try:
        return store.count(kind)
    finally:
        store.close()


def serving_counters(settings: Settings) -> dict[str, float]:
    """Persisted serving counters: forecasts by kind, stale refusals, model swaps, errors."""
    store = PredictionStore(settings)
    try:
        return store.counters()
    finally:
        store.close()
