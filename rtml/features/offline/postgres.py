"""Services: the PostgreSQL table `<namespace>.minute_features` with `minute_key` as primary
key and `INSERT .. ON CONFLICT DO UPDATE WHERE revision <= excluded.revision`; what it cannot
take while PostgreSQL is away waits in the spool (`offline_spool`)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

import pandas as pd

from rtml.config import Settings
from rtml.features.feast_repo import SOURCE_COLUMNS, ensure_offline_table, pg_table
from rtml.features.offline.base import OfflineMinutes, _where, offline_spool
from rtml.spool import PgLink, Spool
from rtml.storage import pg_delete

if TYPE_CHECKING:
    import psycopg


class PostgresMinutes(OfflineMinutes):
    """Services: a table keyed by minute in the namespace schema; upsert = one statement.

    The schema and table are created by the first upsert; reading creates nothing (a reader
    of a pipeline that never wrote sees no rows and leaves no schema behind).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.table = pg_table(settings)
        self.link = PgLink(settings.postgres_dsn)
        self._exists = False

    @property
    def conn(self) -> psycopg.Connection:
        return self.link.conn

    def _table_exists(self) -> bool:
        row = self.conn.execute("SELECT to_regclass(%s)", (self.table,)).fetchone()
        return row is not None and row[0] is not None

    def _readable(self) -> bool:
        self._exists = self._exists or self._table_exists()
        return self._exists

    def close(self) -> None:
        self.link.close()

    def spool(self) -> Spool:
        return offline_spool(self.settings)

    def upsert(self, source: pd.DataFrame) -> pd.DataFrame:
        if source.empty:
            return source
        if not self._exists:
            ensure_offline_table(self.settings)
            self._exists = True
        cols = ", ".join(SOURCE_COLUMNS)
        buf = io.StringIO()
        source.to_csv(buf, index=False, header=False, date_format="%Y-%m-%d %H:%M:%S%z")
        updates = ", ".join(f"{c} = excluded.{c}" for c in SOURCE_COLUMNS if c != "minute_key")
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS incoming (LIKE {self.table}) ON COMMIT DELETE ROWS")
            with cur.copy(f"COPY incoming ({cols}) FROM STDIN WITH (FORMAT csv)") as copy:
                copy.write(buf.getvalue())
            # Within one batch the same minute may come twice: keep its latest revision.
            cur.execute(
                f"""INSERT INTO {self.table} ({cols})
                SELECT DISTINCT ON (minute_key) {cols} FROM incoming ORDER BY minute_key, revision DESC
                ON CONFLICT (minute_key) DO UPDATE SET {updates}
                WHERE {self.table}.revision <= excluded.revision"""
            )
            cur.execute(
                f"SELECT {cols} FROM {self.table} WHERE minute_key IN (SELECT minute_key FROM incoming) "
                "ORDER BY minute_key"
            )
            return self._frame(cur.fetchall())

    def _frame(self, rows: list[tuple[object, ...]]) -> pd.DataFrame:
        df = pd.DataFrame(rows, columns=list(SOURCE_COLUMNS))
        for col in ("minute", "event_time"):
            df[col] = pd.to_datetime(df[col], utc=True)
        return df.astype(
            {"minute_key": "int64", "tx_count": "int64", "fee_total_sat": "int64", "revision": "int64"}
        )

    def read(self, start: datetime | None = None, end: datetime | None = None) -> pd.DataFrame:
        if not self._readable():
            return self._frame([])
        where, params = _where(start, end, "%s")
        cols = ", ".join(SOURCE_COLUMNS)
        rows = self.conn.execute(f"SELECT {cols} FROM {self.table} {where} ORDER BY minute_key", params)
        return self._frame(rows.fetchall())

    def recent(self, minutes: int) -> pd.DataFrame:
        if not self._readable():
            return self._frame([])
        cols = ", ".join(SOURCE_COLUMNS)
        rows = self.conn.execute(
            f"SELECT {cols} FROM {self.table} WHERE minute_key >= "
            f"(SELECT max(minute_key) FROM {self.table}) - %s ORDER BY minute_key",
            (60 * (minutes - 1),),
        )
        return self._frame(rows.fetchall())

    def count(self) -> tuple[int, int]:
        if not self._readable():
            return 0, 0
        row = self.conn.execute(f"SELECT count(*), count(DISTINCT minute_key) FROM {self.table}").fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    def trim(self, before: datetime, keep: Sequence[tuple[datetime, datetime]]) -> int:
        if not self._readable():
            return 0
        outside = "".join(" AND NOT (minute >= %s AND minute < %s)" for _ in keep)
        params: list[object] = [before, *(t for window in keep for t in window)]
        return pg_delete(self.conn, self.table, f"DELETE FROM {self.table} WHERE minute < %s{outside}", params)

    def stats(self) -> tuple[int, int, int | None]:
        if not self._readable():
            return 0, 0, None
        row = self.conn.execute(
            f"SELECT count(*), min(minute_key), pg_total_relation_size(%s) FROM {self.table}", (self.table,)
        ).fetchone()
        assert row is not None
        return int(row[2]), int(row[0]), None if row[1] is None else int(row[1]) * 1000
