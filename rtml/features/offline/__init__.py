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

from collections.abc import Callable
from datetime import datetime

import pandas as pd

from rtml.config import Settings
from rtml.contracts import MinuteFeatures
from rtml.features.offline.base import (
    MINUTE_COLUMNS,
    OfflineMinutes,
    from_spool,
    latest_rows,
    offline_spool,
    to_minutes_frame,
    to_source_frame,
    to_spool,
)
from rtml.features.offline.parquet import ParquetMinutes
from rtml.features.offline.postgres import PostgresMinutes

__all__ = [
    "MINUTE_COLUMNS", "OfflineMinutes", "ParquetMinutes", "PostgresMinutes", "from_spool", "latest_rows",
    "offline_spool", "open_offline", "open_offline_has_rows", "read_feature_minutes", "read_minutes_df",
    "to_minutes_frame", "to_source_frame", "to_spool",
]  # fmt: skip

_BACKENDS: dict[str, Callable[[Settings], OfflineMinutes]] = {"parquet": ParquetMinutes, "postgres": PostgresMinutes}


def open_offline(settings: Settings) -> OfflineMinutes:
    """The offline store of the profile's backend (`offline`: parquet or postgres)."""
    return _BACKENDS[settings.backend("offline")](settings)


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
        if (spool := store.spool()) is not None:
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
