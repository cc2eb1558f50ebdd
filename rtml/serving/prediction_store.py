"""Where the prediction log's records and the serving counters land: one interface
(`PredictionBackend`), one class per backend, chosen by `open_prediction_store`
(`PredictionStore(settings)` is the same). Embedded: `<data_dir>/predictions.sqlite`,
records and counters in one transaction. Services: the table `predictions` in the schema
`settings.namespace`, counters in the Redis hash `{namespace}:counters:serving`.

Kinds: the pipeline's own forecast of every closed minute is `pipeline` (written by the
scheduler, at most one per target minute: a unique index makes a re-run after a crash a
no-op); callers' forecasts are `online`, `batch` and `what-if`. Only `pipeline` is judged.

Services, PostgreSQL down: records wait in the local spool (rtml.spool) with a `rid` each
(unique in the table), drained before the next write: nothing lost, nothing twice. Monitoring
reads (`settle` first) refuse while forecasts are still spooled rather than judge an hour on
part of them.
"""

from __future__ import annotations

import json
import os
import uuid
from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import astuple, dataclass
from typing import TYPE_CHECKING

from rtml.config import Settings
from rtml.spool import PgLink, Record, Spool, unreachable
from rtml.storage import (
    Closeable,
    RedisCounters,
    SqliteCounters,
    counters_key,
    ensure_schema,
    pg_delete,
    sqlite_connect,
)

if TYPE_CHECKING:
    import psycopg

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


def _kinds(kinds: tuple[str, ...], exclude: bool) -> str:
    """The WHERE clause on kinds (`?` marks): these kinds, or all others with `exclude`."""
    return f"kind {'NOT ' if exclude else ''}IN ({', '.join('?' * len(kinds))})"


class PredictionBackend(Closeable):
    """Where records and counters land; used only by the writer thread (and by readers).

    Subclasses run SQL written with `?` marks and `{table}` for the table (`_query`, `_delete`)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @abstractmethod
    def write(self, records: list[PredictionRecord], counts: Mapping[str, float]) -> None:
        """Append records (a pipeline forecast whose target minute is logged already is
        skipped) and add `counts` to the serving counters."""

    @abstractmethod
    def settle(self) -> None:
        """Make every record written so far readable (services: drain the spool, or raise
        `Unsettled` while forecasts still wait in it)."""

    @abstractmethod
    def _query(self, sql: str, params: tuple) -> list[tuple]: ...

    @abstractmethod
    def _delete(self, sql: str, params: tuple) -> int: ...

    @abstractmethod
    def _size(self) -> int:
        """Bytes the table takes (with its indexes, or the SQLite file with its WAL)."""

    def read(self, since_ms: int, limit: int) -> list[PredictionRecord]:
        sql = f"SELECT {', '.join(COLUMNS)} FROM {{table}} WHERE logged_ms >= ? ORDER BY id LIMIT ?"
        return [PredictionRecord(*row) for row in self._query(sql, (since_ms, limit))]

    def read_targets(self, kinds: tuple[str, ...], start_ms: int, end_ms: int) -> list[PredictionRecord]:
        """Records of these kinds whose target minute is in [start_ms, end_ms), oldest logged first."""
        sql = (
            f"SELECT {', '.join(COLUMNS)} FROM {{table}} WHERE {_kinds(kinds, False)} "
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
        return self._delete(
            f"DELETE FROM {{table}} WHERE {_kinds(kinds, exclude)} AND target_minute_ms < ?", (*kinds, before_ms)
        )

    def stats(self, kinds: tuple[str, ...], exclude: bool = False) -> tuple[int, int, int | None]:
        """(bytes, rows, oldest target minute) of these kinds (or of all others, `exclude`); the
        table's bytes are shared out by rows."""
        where = _kinds(kinds, exclude)
        rows, oldest = self._query(f"SELECT count(*), min(target_minute_ms) FROM {{table}} WHERE {where}", kinds)[0]
        total = max(1, int(self._query("SELECT count(*) FROM {table}", ())[0][0]))
        return self._size() * int(rows) // total, int(rows), None if oldest is None else int(oldest)

    @abstractmethod
    def counters(self) -> dict[str, float]:
        """The serving counters, by name."""


class SqlitePredictionStore(PredictionBackend):
    """`<data_dir>/predictions.sqlite`: records and counters commit in one transaction."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.path = settings.path("predictions.sqlite")
        self.db = sqlite_connect(self.path, timeout=30, synchronous="FULL")
        for ddl in _SQLITE_DDL:
            self.db.execute(ddl)
        self._counters = SqliteCounters(conn=self.db)

    def write(self, records: list[PredictionRecord], counts: Mapping[str, float]) -> None:
        self.db.execute("BEGIN")
        try:
            if records:
                self.db.executemany(
                    f"INSERT INTO predictions ({', '.join(COLUMNS)}) VALUES ({', '.join(['?'] * len(COLUMNS))})"
                    " ON CONFLICT DO NOTHING",
                    [astuple(r) for r in records],
                )
            self._counters.add(counts)  # inside the transaction: commits with the records
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def settle(self) -> None:
        """Nothing to do: a record is readable once written."""

    def _query(self, sql: str, params: tuple) -> list[tuple]:
        return self.db.execute(sql.format(table="predictions"), params).fetchall()

    def _delete(self, sql: str, params: tuple) -> int:
        return int(self.db.execute(sql.format(table="predictions"), params).rowcount)

    def _size(self) -> int:
        return sum(os.path.getsize(p) for p in (self.path, f"{self.path}-wal") if os.path.exists(p))

    def counters(self) -> dict[str, float]:
        return self._counters.read()

    def close(self) -> None:
        self._counters.close()
        self.db.close()


class PostgresPredictionStore(PredictionBackend):
    """The table `predictions` in the namespace's schema (with the spool `predictions` for an
    outage); counters in Redis."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.table = f'"{settings.namespace}".predictions'
        self.link = PgLink(settings.postgres_dsn, self._create)
        self.spool = Spool(settings, "predictions")
        self._counters = RedisCounters(settings.redis_url, counters_key(settings, "serving"))

    @property
    def pg(self) -> psycopg.Connection:
        return self.link.conn

    def _create(self, conn: psycopg.Connection) -> None:
        ensure_schema(conn, self.settings)
        conn.execute(f"CREATE TABLE IF NOT EXISTS {self.table} ({_PG_COLUMNS})")
        conn.execute(f"ALTER TABLE {self.table} ADD COLUMN IF NOT EXISTS rid TEXT")
        conn.execute(f"CREATE INDEX IF NOT EXISTS predictions_target ON {self.table} (target_minute_ms)")
        conn.execute(
            f"CREATE UNIQUE INDEX IF NOT EXISTS predictions_pipeline ON {self.table} (target_minute_ms) "
            "WHERE kind = 'pipeline'"
        )
        conn.execute(f"CREATE UNIQUE INDEX IF NOT EXISTS predictions_rid ON {self.table} (rid)")

    def write(self, records: list[PredictionRecord], counts: Mapping[str, float]) -> None:
        """Each record gets a unique `rid` before its first try, so a retry (from the spool,
        after PostgreSQL came back) writes it once; records PostgreSQL cannot take are spooled,
        and the spool is drained first at every write."""
        if records:
            spooled = [(uuid.uuid4().hex, json.dumps(astuple(r))) for r in records]
            try:
                self.spool.drain(self._write_pg)
                self._write_pg(spooled)
            except Exception as exc:
                if not unreachable(exc):
                    raise
                self.spool.put(spooled)
        self._counters.add(counts)

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
        self.spool.settle(self._write_pg)

    def _query(self, sql: str, params: tuple) -> list[tuple]:
        return self.pg.execute(sql.format(table=self.table).replace("?", "%s"), params).fetchall()

    def _delete(self, sql: str, params: tuple) -> int:
        return pg_delete(self.pg, self.table, sql.format(table=self.table).replace("?", "%s"), params)

    def _size(self) -> int:
        row = self.pg.execute("SELECT pg_total_relation_size(%s)", (self.table,)).fetchone()
        assert row is not None
        return int(row[0])

    def counters(self) -> dict[str, float]:
        return self._counters.read()

    def close(self) -> None:
        self.link.close()
        self.spool.close()
        self._counters.close()


_BACKENDS: dict[str, type[PredictionBackend]] = {"sqlite": SqlitePredictionStore, "postgres": PostgresPredictionStore}


def open_prediction_store(settings: Settings) -> PredictionBackend:
    """The prediction store of the settings' profile."""
    return _BACKENDS[settings.backend("predictions")](settings)


# The name the prediction store has always been opened by (`PredictionStore(settings)`).
PredictionStore = open_prediction_store
