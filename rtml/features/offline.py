"""The offline store's table of minutes: idempotent upserts and reads, one row per minute.

Feast's offline push appends (a retried push writes a row twice), so rtml writes the table
Feast reads itself, as an upsert keyed by minute where the latest revision wins:
- embedded: one Parquet file per UTC day under `feature_repo/offline/minutes/`; an upsert
  rewrites the touched days to a temporary file and renames it over the old one, so a writer
  killed at any moment leaves either the old or the new day, never half of one;
- services: the PostgreSQL table `<namespace>.minute_features` with `minute_key` as primary
  key and `INSERT .. ON CONFLICT DO UPDATE WHERE revision <= excluded.revision`.
Both return the winning rows of the minutes they were given, which is what goes online.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING

import pandas as pd

from rtml.config import Settings
from rtml.contracts import MinuteFeatures
from rtml.features.feast_repo import CHAIN_ID, SOURCE_COLUMNS, ensure_offline_table, offline_dir, pg_table
from rtml.spool import PgLink, Record, Spool

if TYPE_CHECKING:
    import psycopg

MINUTE_COLUMNS = list(MinuteFeatures.COLUMNS)


def to_source_frame(minutes: pd.DataFrame) -> pd.DataFrame:
    """A minutes frame (MinuteFeatures columns) as rows of the offline table / push source."""
    minute = pd.to_datetime(minutes["minute"], utc=True).dt.as_unit("us")
    df = pd.DataFrame(
        {
            "minute_key": minute.astype("int64") // 10**6,
            "chain_id": CHAIN_ID,
            "minute": minute,
            "tx_count": minutes["tx_count"].astype("int64"),
            "fee_total_sat": minutes["fee_total_sat"].astype("int64"),
            "fee_avg_sat": minutes["fee_avg_sat"].astype("float64"),
            "revision": minutes["revision"].astype("int64"),
            "event_time": pd.to_datetime(minutes["event_time"], utc=True).dt.as_unit("us"),
        }
    )
    return df.loc[:, list(SOURCE_COLUMNS)].reset_index(drop=True)


def to_spool(source: pd.DataFrame) -> list[Record]:
    """Offline rows as spool records keyed by minute (a later revision replaces an earlier one)."""
    return [
        (str(k), json.dumps([int(k), int(c), int(t), None if pd.isna(a) else float(a), int(r)]))
        for k, c, t, a, r in zip(
            source["minute_key"], source["tx_count"], source["fee_total_sat"], source["fee_avg_sat"],
            source["revision"], strict=True,
        )
    ]  # fmt: skip


def from_spool(records: Sequence[Record]) -> pd.DataFrame:
    """Spool records back to offline rows (`to_spool`'s inverse)."""
    rows = [json.loads(doc) for _, doc in records]
    minute = pd.to_datetime([r[0] * 1000 for r in rows], unit="ms", utc=True)
    return to_source_frame(
        pd.DataFrame(
            {
                "minute": minute,
                "tx_count": [r[1] for r in rows],
                "fee_total_sat": [r[2] for r in rows],
                "fee_avg_sat": pd.Series([r[3] for r in rows], dtype="float64"),
                "revision": [r[4] for r in rows],
                "event_time": minute + pd.Timedelta(minutes=1),
            }
        )
    )


def offline_spool(settings: Settings) -> Spool:
    """Services: offline rows PostgreSQL could not take (see FeatureStoreSink.write_frame)."""
    return Spool(settings, "offline_minutes")


def to_minutes_frame(source: pd.DataFrame) -> pd.DataFrame:
    """Offline rows back to the MinuteFeatures columns, sorted by minute."""
    df = source.loc[:, MINUTE_COLUMNS].copy()
    for col in ("minute", "event_time"):
        df[col] = pd.to_datetime(df[col], utc=True).dt.as_unit("ns")
    df["fee_avg_sat"] = df["fee_avg_sat"].astype("float64")
    df = df.astype({"tx_count": "int64", "fee_total_sat": "int64", "revision": "int64"})
    return df.sort_values("minute").reset_index(drop=True)


def latest_rows(df: pd.DataFrame) -> pd.DataFrame:
    """One row per minute_key, the highest revision (the later row on a tie)."""
    df = df.reset_index(drop=True)
    df["_order"] = range(len(df))
    df = df.sort_values(["minute_key", "revision", "_order"]).drop_duplicates("minute_key", keep="last")
    return df.drop(columns="_order").reset_index(drop=True)


class OfflineMinutes(ABC):
    """The offline table of minutes; `open_offline(settings)` picks the backend."""

    @abstractmethod
    def upsert(self, source: pd.DataFrame) -> pd.DataFrame:
        """Upsert offline rows; return the stored (winning) rows of those minutes."""

    @abstractmethod
    def read(self, start: datetime | None = None, end: datetime | None = None) -> pd.DataFrame:
        """Offline rows with start <= minute < end, sorted by minute."""

    @abstractmethod
    def recent(self, minutes: int) -> pd.DataFrame:
        """The rows of the `minutes` minutes ending at the newest stored minute."""

    @abstractmethod
    def count(self) -> tuple[int, int]:
        """(rows, distinct minutes): equal unless something broke idempotency."""

    @abstractmethod
    def trim(self, before: datetime, keep: Sequence[tuple[datetime, datetime]]) -> int:
        """Retention: drop minutes before `before` outside every [start, end) of `keep`; returns how many."""

    @abstractmethod
    def stats(self) -> tuple[int, int, int | None]:
        """(bytes, minutes, oldest minute in ms or None): for `rtml status`."""

    @abstractmethod
    def close(self) -> None:
        """Release what the store holds open; a later call opens it again."""

    def __enter__(self) -> OfflineMinutes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ParquetMinutes(OfflineMinutes):
    """Embedded: day-partitioned Parquet, each day rewritten atomically under a file lock."""

    def __init__(self, settings: Settings) -> None:
        self.dir = offline_dir(settings)

    @contextmanager
    def _lock(self) -> Iterator[None]:
        with open(self.dir.parent / ".minutes.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _files(self, start: datetime | None = None, end: datetime | None = None) -> list[str]:
        """The day files, only those overlapping [start, end) when given: a read of a window opens
        its days, not every day kept (the store is kept forever by default, and drift, monitoring
        and training read windows of it every hour)."""
        first = None if start is None else _utc(start).floor("D")
        stop = None if end is None else _utc(end)
        return [
            str(path)
            for path in sorted(self.dir.glob("date=*.parquet"))
            if (first is None or _utc(path.stem[5:]) >= first) and (stop is None or _utc(path.stem[5:]) < stop)
        ]

    def upsert(self, source: pd.DataFrame) -> pd.DataFrame:
        if source.empty:
            return source
        days = source["minute"].dt.strftime("%Y-%m-%d")
        winners = []
        with self._lock():
            for orphan in self.dir.glob(".date=*.tmp"):  # left by a writer killed mid-write
                orphan.unlink()
            for day, part in source.groupby(days, sort=True):
                path = self.dir / f"date={day}.parquet"
                merged = pd.concat([pd.read_parquet(path), part]) if path.exists() else part
                merged = latest_rows(merged)
                tmp = self.dir / f".date={day}.parquet.{os.getpid()}.tmp"
                merged.to_parquet(tmp, index=False)
                os.replace(tmp, path)
                winners.append(merged[merged["minute_key"].isin(part["minute_key"])])
        return pd.concat(winners, ignore_index=True)

    def _query(self, sql: str, params: list[object] | None = None, files: list[str] | None = None) -> pd.DataFrame:
        import duckdb

        files = self._files() if files is None else files
        if not files:
            return pd.DataFrame({c: [] for c in SOURCE_COLUMNS})
        with duckdb.connect() as conn:
            return conn.execute(sql.format(src=f"read_parquet({files!r})"), params or []).df()

    def read(self, start: datetime | None = None, end: datetime | None = None) -> pd.DataFrame:
        where, params = _where(start, end, "?")
        return self._query(f"SELECT * FROM {{src}} {where} ORDER BY minute_key", params, self._files(start, end))

    def recent(self, minutes: int) -> pd.DataFrame:
        files = self._files()
        if not files:
            return pd.DataFrame({c: [] for c in SOURCE_COLUMNS})
        days = 1 + (minutes + 1439) // 1440
        df = pd.concat([pd.read_parquet(f) for f in files[-days:]], ignore_index=True)
        first = df["minute_key"].max() - 60 * (minutes - 1)
        return df[df["minute_key"] >= first].sort_values("minute_key").reset_index(drop=True)

    def count(self) -> tuple[int, int]:
        df = self._query("SELECT count(*) AS n, count(DISTINCT minute_key) AS d FROM {src}")
        return (int(df["n"].iloc[0]), int(df["d"].iloc[0])) if len(df) else (0, 0)

    def trim(self, before: datetime, keep: Sequence[tuple[datetime, datetime]]) -> int:
        # Days wholly before `before` and outside `keep` go at once; the day `before` falls in
        # (or one a kept window touches) is rewritten atomically, like an upsert.
        gone = 0
        cut = pd.Timestamp(before)
        with self._lock():
            for path in self.dir.glob("date=*.parquet"):
                start = pd.Timestamp(path.stem[5:], tz="UTC")
                if start >= cut:
                    continue
                end = start + pd.Timedelta(days=1)
                touched = any(pd.Timestamp(s) < end and pd.Timestamp(e) > start for s, e in keep)
                if end <= cut and not touched:
                    gone += len(pd.read_parquet(path, columns=["minute_key"]))
                    path.unlink()
                    continue
                day = pd.read_parquet(path)
                kept = _kept(day, cut, keep)
                if not kept.all():
                    tmp = self.dir / f".{path.name}.{os.getpid()}.tmp"
                    day[kept].to_parquet(tmp, index=False)
                    os.replace(tmp, path)
                    gone += int((~kept).sum())
        return gone

    def stats(self) -> tuple[int, int, int | None]:
        import pyarrow.parquet as pq

        files = self._files()
        size = sum(os.path.getsize(f) for f in files)
        rows = sum(pq.read_metadata(f).num_rows for f in files)
        if not files:
            return size, rows, None
        first = pd.read_parquet(files[0], columns=["minute_key"])["minute_key"]
        return size, rows, int(first.min()) * 1000 if len(first) else None

    def close(self) -> None:
        """Nothing to release: every call opens its files (and its DuckDB connection) and closes them."""


def _utc(moment: datetime | str) -> pd.Timestamp:
    stamp = pd.Timestamp(moment)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def _kept(frame: pd.DataFrame, before: pd.Timestamp, keep: Sequence[tuple[datetime, datetime]]) -> pd.Series:
    """Which rows retention keeps: at or after `before`, or inside one of the `keep` windows."""
    mask = frame["minute"] >= before
    for start, end in keep:
        mask |= (frame["minute"] >= pd.Timestamp(start)) & (frame["minute"] < pd.Timestamp(end))
    return mask


def _where(start: datetime | None, end: datetime | None, mark: str) -> tuple[str, list[object]]:
    clauses, params = [], []
    if start is not None:
        clauses.append(f"minute >= {mark}")
        params.append(pd.Timestamp(start).tz_localize("UTC") if pd.Timestamp(start).tzinfo is None else start)
    if end is not None:
        clauses.append(f"minute < {mark}")
        params.append(pd.Timestamp(end).tz_localize("UTC") if pd.Timestamp(end).tzinfo is None else end)
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", params


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

    def write_spooled(self, records: list[Record]) -> None:
        """Upsert spooled rows (the spool's write: latest revision wins, so a repeat is a no-op)."""
        self.upsert(from_spool(records))

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
        return int(self.conn.execute(f"DELETE FROM {self.table} WHERE minute < %s{outside}", params).rowcount)

    def stats(self) -> tuple[int, int, int | None]:
        if not self._readable():
            return 0, 0, None
        row = self.conn.execute(
            f"SELECT count(*), min(minute_key), pg_total_relation_size(%s) FROM {self.table}", (self.table,)
        ).fetchone()
        assert row is not None
        return int(row[2]), int(row[0]), None if row[1] is None else int(row[1]) * 1000


def open_offline(settings: Settings) -> OfflineMinutes:
    return PostgresMinutes(settings) if settings.profile == "services" else ParquetMinutes(settings)


def read_minutes_df(
    settings: Settings, start: datetime | None = None, end: datetime | None = None
) -> pd.DataFrame:
    """The offline minutes, one row per minute (latest revision), start <= minute < end.

    Columns are MinuteFeatures' (minute, tx_count, fee_total_sat, fee_avg_sat, event_time,
    revision), timestamps tz-aware UTC. This is what drift, training and monitoring read; in
    services never while minutes still wait in the spool (`Unsettled`, which the scheduler
    waits out): a job at t must see every minute before t.
    """
    store = open_offline(settings)
    try:
        if isinstance(store, PostgresMinutes):
            spool = offline_spool(settings)
            try:
                spool.settle(store.write_spooled)
            finally:
                spool.close()
        return to_minutes_frame(store.read(start, end))
    finally:
        store.close()


def read_feature_minutes(
    settings: Settings, start: datetime | None = None, end: datetime | None = None
) -> list[MinuteFeatures]:
    """`rtml features show`: the feature store's minutes once it holds any, else the engine's table."""
    frame = read_minutes_df(settings, start, end)
    if frame.empty and not open_offline_has_rows(settings):
        from rtml.aggregate.sinks import read_minutes

        return read_minutes(settings, start, end)
    return [
        MinuteFeatures(
            minute=m.to_pydatetime(),
            tx_count=int(c),
            fee_total_sat=int(t),
            fee_avg_sat=None if pd.isna(a) else float(a),
            event_time=e.to_pydatetime(),
            revision=int(r),
        )
        for m, c, t, a, e, r in zip(
            frame["minute"], frame["tx_count"], frame["fee_total_sat"], frame["fee_avg_sat"],
            frame["event_time"], frame["revision"], strict=True,
        )
    ]  # fmt: skip


def open_offline_has_rows(settings: Settings) -> bool:
    store = open_offline(settings)
    try:
        return store.count()[0] > 0
    finally:
        store.close()
