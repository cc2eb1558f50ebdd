"""Embedded: one Parquet file per UTC day under `feature_repo/offline/minutes/`; an upsert
rewrites the touched days to a temporary file and renames it over the old one, so a writer
killed at any moment leaves either the old or the new day, never half of one."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime

import pandas as pd

from rtml.config import Settings
from rtml.features.feast_repo import SOURCE_COLUMNS, offline_dir
from rtml.features.offline.base import OfflineMinutes, _kept, _utc, _where, latest_rows


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
