"""The pipeline's one clock: the end of the newest closed minute every sink has taken.

The aggregation engine writes a minute to its own `minutes` table first and to the feature
store next, clearing the minute from its outbox only when every sink took it. So the clock is
the start of the oldest minute still in the outbox, or else the end of the newest minute of
`minutes` (both in `<data_dir>/aggregate.sqlite`, in both profiles): at clock t every minute
before t is in every store, which is what lets work triggered at t read only minutes before t
and still see all of them. A crash of the engine leaves the clock where the stores agree.
"""

from __future__ import annotations

import sqlite3
from contextvars import ContextVar
from datetime import UTC, datetime

from rtml.aggregate.sinks import aggregate_db_path
from rtml.config import Settings
from rtml.contracts import MINUTE_MS

# The boundary a scheduled job runs at (the scheduler sets it around each job): "now" for what the
# job records, such as events, since the clock itself may be far ahead while the scheduler catches up.
current_boundary: ContextVar[int | None] = ContextVar("current_boundary", default=None)


class Clock:
    """Reads the clock on one open connection (a read is two index lookups, microseconds).

    It only reads: the engine creates its tables (and the database's WAL mode) when it starts,
    and until then there is no clock.
    """

    def __init__(self, settings: Settings) -> None:
        self._conn = sqlite3.connect(aggregate_db_path(settings), timeout=60, isolation_level=None)

    def _one(self, sql: str, params: tuple = ()) -> int | None:
        try:
            row = self._conn.execute(sql, params).fetchone()
        except sqlite3.OperationalError as exc:  # before the engine made its tables
            if "no such table" in str(exc):
                return None
            raise
        return None if row is None or row[0] is None else int(row[0])

    def now_ms(self) -> int | None:
        """The clock in epoch ms, or None before the first minute closed.

        The newest minute is read before the outbox: a minute enters the outbox, then `minutes`,
        then the other sinks, then leaves the outbox, so in this order of reads a minute that is
        not in every sink yet always holds the clock back. (The Spark driver keeps its outbox in
        its own state file, so with it there is no outbox table here.)
        """
        newest = self._one("SELECT max(minute) FROM minutes")
        if newest is None:
            return None
        pending = self._one("SELECT min(minute) FROM outbox")
        return min(newest + MINUTE_MS, pending) if pending is not None else newest + MINUTE_MS

    def first_minute_ms(self) -> int | None:
        """Start of the oldest minute there is (where every job's boundaries begin)."""
        return self._one("SELECT min(minute) FROM minutes")

    def nth_minute_end_ms(self, n: int) -> int | None:
        """End of the n-th minute (1-based): the first boundary with n minutes before it."""
        start = self._one("SELECT minute FROM minutes ORDER BY minute LIMIT 1 OFFSET ?", (n - 1,))
        return None if start is None else start + MINUTE_MS

    def close(self) -> None:
        self._conn.close()


def pipeline_clock(settings: Settings) -> datetime | None:
    """The clock as a UTC datetime (for `rtml status`), or None before the first closed minute."""
    clock = Clock(settings)
    try:
        ms = clock.now_ms()
    finally:
        clock.close()
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)
