"""The offline store's interface (`OfflineMinutes`) and what every backend shares: the frames
it takes and gives, and the spool records of rows a store could not take."""

from __future__ import annotations

import json
from abc import abstractmethod
from collections.abc import Sequence
from datetime import datetime

import pandas as pd

from rtml.config import Settings
from rtml.contracts import MinuteFeatures
from rtml.features.feast_repo import CHAIN_ID, SOURCE_COLUMNS
from rtml.spool import Record, Spool
from rtml.storage import Closeable

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


class OfflineMinutes(Closeable):
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

    def spool(self) -> Spool | None:
        """Where writes wait while the store is away (rtml.spool); None for a store that is a
        local file, which does not go away."""
        return None

    def write_spooled(self, records: list[Record]) -> None:
        """Upsert spooled rows (the spool's write: latest revision wins, so a repeat is a no-op)."""
        self.upsert(from_spool(records))


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
