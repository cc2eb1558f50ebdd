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

from rtml.aggregate.embedded import STATE_SCHEMA
from rtml.aggregate.sinks import MINUTES_SCHEMA, aggregate_db_path, connect
from rtml.config import Settings
from rtml.contracts import MINUTE_MS

# The boundary a scheduled job runs at (the scheduler sets it around each job): "now" for what the
# job records, such as events, since the clock itself may be far ahead while the scheduler catches up.
current_boundary: ContextVar[int | None] = ContextVar("current_boundary", default=None)

_CLOCK_SQL = "SELECT coalesce((SELECT min(minute) FROM outbox), (SELECT max(minute) + ? FROM minutes))"


class Clock:
    """Reads the clock on one open connection (a read is two index lookups, microseconds)."""

    def __init__(self, settings: Settings) -> None:
        self._conn = connect(aggregate_db_path(settings))
        self._conn.executescript(MINUTES_SCHEMA + STATE_SCHEMA)

    def now_ms(self) -> int | None:
        """The clock in epoch ms, or None before the first minute closed."""
        row = self._conn.execute(_CLOCK_SQL, (MINUTE_MS,)).fetchone()
        return None if row[0] is None else int(row[0])

    def first_minute_ms(self) -> int | None:
        """Start of the oldest minute there is (where every job's boundaries begin)."""
        row = self._conn.execute("SELECT min(minute) FROM minutes").fetchone()
        return None if row[0] is None else int(row[0])

    def nth_minute_end_ms(self, n: int) -> int | None:
        """End of the n-th minute (1-based): the first boundary with n minutes before it."""
        row = self._conn.execute("SELECT minute FROM minutes ORDER BY minute LIMIT 1 OFFSET ?", (n - 1,)).fetchone()
        return None if row is None else int(row[0]) + MINUTE_MS

    def close(self) -> None:
        self._conn.close()


def pipeline_clock(settings: Settings) -> datetime | None:
    """The clock as a UTC datetime (for `rtml status`), or None before the first closed minute."""
    try:
        clock = Clock(settings)
    except sqlite3.OperationalError:
        return None
    try:
        ms = clock.now_ms()
    finally:
        clock.close()
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)
