"""The stream: a durable, replayable log of TxEvents (Kinesis Data Streams in the AWS original).

One interface, backends side by side (SQLite log embedded, Redis Streams in services),
chosen by `open_stream(settings)`. Offsets are opaque strings, only compared by their backend;
a consumer keeps its own offset (`commit`), or keeps it beside its own state in one transaction
when it needs exactly-once effects (the aggregation engine does).

Two speeds: `append`/`read` speak TxEvent for everyone; `append_rows`/`read_slim` move plain
tuples for the hot paths (bulk ingestion, the aggregation engine at hundreds of thousands of
events a second), where building a dataclass per event would cost more than the work itself.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from rtml.contracts import Row, TxEvent
from rtml.storage import Closeable

Offset = str
# (tx_hash, event_time, fee_sat): what the aggregation engine needs.
Slim = tuple[str, int, int]
COLUMNS = ("tx_hash", "event_time", "fee_sat", "size", "source", "ingest_time")


def redis_stream_key(namespace: str) -> str:
    """The Redis Stream of the services profile: written by ingestion, read by both engines
    (the Spark source on the executors too) and named in the engine's state."""
    return f"{namespace}:stream:tx"


class StreamReset(RuntimeError):
    """The log was lost and recreated under this reader (a Redis that restarted empty): offsets
    of the old one mean nothing in the new one. Raised once; the reader's `identity` is the new one."""

    def __init__(self, old: str, new: str) -> None:
        super().__init__(f"the stream {old!r} was lost; it is now {new!r}")
        self.old, self.new = old, new


@dataclass(frozen=True)
class AppendMark:
    """Where the last append left a log: its identity, last offset, and how many entries the log
    has taken since it was created (None where the backend cannot tell)."""

    identity: str
    offset: Offset
    entries_added: int | None


class Stream(Closeable):
    # Names this log for its whole life (a recreated log gets a new one), so a consumer that
    # keeps its offset elsewhere can tell that the offset no longer means anything.
    identity: str
    # Set by backends that can be lost under their readers (Redis): see `ledger.AppendLedger`.
    last_append: AppendMark | None = None

    def append(self, events: Sequence[TxEvent]) -> Offset | None:
        """Append durably, in order; returns the offset of the last event (None for no events)."""
        return self.append_rows(
            [(e.tx_hash, e.event_time, e.fee_sat, e.size, e.source, e.ingest_time) for e in events]
        )

    @abstractmethod
    def append_rows(self, rows: Sequence[Row]) -> Offset | None:
        """`append` for already-validated rows in TxEvent field order."""

    @abstractmethod
    def read(self, after: Offset | None, limit: int) -> list[tuple[Offset, TxEvent]]:
        """Up to `limit` events strictly after `after` (from the start when None)."""

    @abstractmethod
    def read_slim(self, after: Offset | None, limit: int) -> tuple[list[Slim], Offset | None]:
        """Up to `limit` (tx_hash, event_time, fee_sat) after `after`, and the offset of the last one."""

    @abstractmethod
    def committed(self, consumer: str) -> Offset | None:
        """The last offset `consumer` committed, or None."""

    @abstractmethod
    def commit(self, consumer: str, offset: Offset) -> None:
        """Record that `consumer` has processed everything up to and including `offset`."""

    @abstractmethod
    def count_after(self, after: Offset | None) -> int:
        """How many events lie after `after` (a consumer's lag)."""

    @abstractmethod
    def trim(self, *, max_age_s: float | None = None, max_len: int | None = None) -> int:
        """Drop the oldest events by age (ingest time) or count; returns how many were dropped."""

    @abstractmethod
    def trim_consumed(self, before_event_ms: int, consumers: Sequence[str]) -> int:
        """Retention: drop the oldest events, up to the first with event time >= `before_event_ms`,
        but never past the lowest offset the `consumers` committed (nothing if one never did).

        Only a prefix goes, so a late event kept behind a newer one waits for the next trim.
        """

    @abstractmethod
    def stats(self) -> tuple[int, int, int | None]:
        """(bytes, events, event time of the oldest event in ms or None): for `rtml status`."""
