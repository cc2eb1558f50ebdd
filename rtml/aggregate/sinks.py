"""Where closed minutes go: idempotent upserts keyed by minute, the latest revision winning.

The engine commits its state and the rows it emits in one transaction (the rows land in an
outbox), then delivers the outbox to every sink its caller gave it. A crash between the two
re-delivers the same rows on restart, which an idempotent sink absorbs: that is how the effect
stays exactly-once while delivery is at-least-once. The engine's own sink is its `minutes`
table; the composition root (`rtml.pipeline.minute_sinks`) adds the feature store's after it.
"""

from __future__ import annotations

import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from rtml.config import Settings
from rtml.contracts import MinuteFeatures, datetime_to_ms, ms_to_datetime
from rtml.storage import sqlite_connect

MINUTES_SCHEMA = """
CREATE TABLE IF NOT EXISTS minutes (
  minute INTEGER PRIMARY KEY,        -- window start, epoch ms UTC
  tx_count INTEGER NOT NULL,
  fee_total_sat INTEGER NOT NULL,
  fee_avg_sat REAL,                  -- NULL when tx_count = 0
  event_time INTEGER NOT NULL,       -- window end, epoch ms UTC
  revision INTEGER NOT NULL
);
"""


class MinuteSink(ABC):
    """Where the engine delivers closed minutes. A sink that keeps writes aside while its store
    is away (a spool) hands them over in `flush`, which the engine calls while the stream is
    quiet: once the input ends, nothing else would."""

    @abstractmethod
    def upsert(self, rows: Sequence[MinuteFeatures]) -> None:
        """Write rows keyed by minute; replaying the same rows changes nothing; a higher revision wins."""

    def flush(self) -> None:  # noqa: B027 - a sink that never spools has nothing to flush
        """Write what waits outside the engine's outbox; a store still away leaves it waiting."""

    def close(self) -> None:  # noqa: B027 - nor, when it holds none, connections to close
        """Release the sink's connections."""


def aggregate_db_path(settings: Settings) -> Path:
    """The engine's local state and output database (both stream backends)."""
    return settings.path("aggregate.sqlite")


def connect(path: Path) -> sqlite3.Connection:
    """The engine's database (state, outbox, minutes), shared by every engine process."""
    return sqlite_connect(path)


class MinutesTable(MinuteSink):
    """The engine's own output table, `minutes` in `<data_dir>/aggregate.sqlite`."""

    def __init__(self, path: Path) -> None:
        self._conn = connect(path)
        self._conn.executescript(MINUTES_SCHEMA)

    def upsert(self, rows: Sequence[MinuteFeatures]) -> None:
        if not rows:
            return
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            self._conn.executemany(
                "INSERT INTO minutes VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(minute) DO UPDATE SET"
                " tx_count = excluded.tx_count, fee_total_sat = excluded.fee_total_sat,"
                " fee_avg_sat = excluded.fee_avg_sat, event_time = excluded.event_time,"
                " revision = excluded.revision WHERE excluded.revision >= minutes.revision",
                [
                    (
                        datetime_to_ms(r.minute),
                        r.tx_count,
                        r.fee_total_sat,
                        r.fee_avg_sat,
                        datetime_to_ms(r.event_time),
                        r.revision,
                    )
                    for r in rows
                ],
            )
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._conn.close()


def read_minutes(
    settings: Settings, start: datetime | None = None, end: datetime | None = None
) -> list[MinuteFeatures]:
    """Minutes from the engine's table with `start <= minute < end`, oldest first."""
    path = aggregate_db_path(settings)
    conn = connect(path)
    try:
        conn.executescript(MINUTES_SCHEMA)
        low = datetime_to_ms(start) if start is not None else -(1 << 62)
        high = datetime_to_ms(end) if end is not None else 1 << 62
        rows = conn.execute(
            "SELECT minute, tx_count, fee_total_sat, fee_avg_sat, event_time, revision FROM minutes"
            " WHERE minute >= ? AND minute < ? ORDER BY minute",
            (low, high),
        ).fetchall()
    finally:
        conn.close()
    return [MinuteFeatures(ms_to_datetime(m), c, t, a, ms_to_datetime(e), r) for m, c, t, a, e, r in rows]
