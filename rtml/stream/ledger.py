"""What was appended to a log that can vanish under its readers (a Redis Stream on a Redis without
persistence), kept where that loss cannot reach: `<data_dir>/stream-ledger.sqlite`.

The appender (ingestion) records each batch once it is appended AND marked in dedup (a batch that
fails before that is re-sent whole, into whatever stream is there then, so it is never lost and
never recorded): the stream's name, the batch's last offset, how many entries the stream had
taken since it was created, and the batch's event-time range. When the stream is lost, the
engine reads here what the old stream held past its own offset, which it can no longer read:
how many events, up to which offset, over which event times (`StreamEnd`).

Bounded: the last `KEEP` batches. A crash between an append and its record leaves the record
missing; the next batch's count covers its events (the count is the stream's own), only its
event-time range is not in the ledger.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rtml.config import Settings
from rtml.storage import sqlite_connect
from rtml.stream.base import AppendMark, Row

# The stream backends that can vanish under their readers: a Redis without persistence, or a
# Redis that lost its data (issue 18). A SQLite stream is a local file that does not.
VOLATILE = ("redis",)

KEEP = 20_000
SCHEMA = """
CREATE TABLE IF NOT EXISTS appends (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  identity TEXT NOT NULL,
  last_offset TEXT NOT NULL,
  entries_added INTEGER,             -- the stream's count after this batch; NULL where unknown
  events INTEGER NOT NULL,
  min_event_time INTEGER NOT NULL,
  max_event_time INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class StreamEnd:
    """What a lost stream held past a reader's position, as far as the ledger knows."""

    last_offset: str  # the old stream's last offset the appender saw acknowledged
    entries_added: int | None  # how many entries it had taken in all
    events_after: int | None  # entries past the reader's position (None: unknown)
    min_event_time: int | None  # event times of the batches holding them (a superset)
    max_event_time: int | None


class AppendLedger:
    def __init__(self, settings: Settings) -> None:
        self._conn = sqlite_connect(settings.path("stream-ledger.sqlite"))
        self._conn.executescript(SCHEMA)
        self._since_prune = 0

    def record(self, mark: AppendMark, rows: Sequence[Row]) -> None:
        if not rows:
            return
        times = [r[1] for r in rows]
        self._conn.execute(
            "INSERT INTO appends (identity, last_offset, entries_added, events, min_event_time, max_event_time)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (mark.identity, mark.offset, mark.entries_added, len(rows), min(times), max(times)),
        )
        self._since_prune += 1
        if self._since_prune >= 500:
            self._conn.execute("DELETE FROM appends WHERE seq <= (SELECT max(seq) FROM appends) - ?", (KEEP,))
            self._since_prune = 0

    def end(self, identity: str, position: int | None) -> StreamEnd | None:
        """The stream `identity`'s end as recorded, and what lay past `position` (entries the
        reader had consumed since the stream was created); None when nothing was recorded."""
        last = self._conn.execute(
            "SELECT last_offset, entries_added FROM appends WHERE identity = ? ORDER BY seq DESC LIMIT 1", (identity,)
        ).fetchone()
        if last is None:
            return None
        offset, added = last
        if position is None or added is None:
            return StreamEnd(offset, added, None, None, None)
        lo, hi = self._conn.execute(
            "SELECT min(min_event_time), max(max_event_time) FROM appends WHERE identity = ? AND entries_added > ?",
            (identity, position),
        ).fetchone()
        return StreamEnd(offset, added, max(0, added - position), lo, hi)

    def close(self) -> None:
        self._conn.close()


def open_ledger(settings: Settings) -> AppendLedger | None:
    """The ledger of the profile's stream when it can vanish (VOLATILE), else None."""
    return AppendLedger(settings) if settings.backend("stream") in VOLATILE else None
