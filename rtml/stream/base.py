"""The stream: a durable, replayable log of TxEvents (Kinesis Data Streams in the AWS original).

One interface, backends side by side (SQLite log embedded, Redis Streams in services),
chosen by `open_stream(settings)`. Offsets are opaque strings that sort in log order within
one backend; a consumer keeps its own offset (`commit`), or keeps it beside its own state in
one transaction when it needs exactly-once effects (the aggregation engine does).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from rtml.contracts import TxEvent

Offset = str


class Stream(ABC):
    @abstractmethod
    def append(self, events: Sequence[TxEvent]) -> Offset | None:
        """Append durably, in order; returns the offset of the last event (None for no events)."""

    @abstractmethod
    def read(self, after: Offset | None, limit: int) -> list[tuple[Offset, TxEvent]]:
        """Up to `limit` events strictly after `after` (from the start when None)."""

    @abstractmethod
    def committed(self, consumer: str) -> Offset | None:
        """The last offset `consumer` committed, or None."""

    @abstractmethod
    def commit(self, consumer: str, offset: Offset) -> None:
        """Record that `consumer` has processed everything up to and including `offset`."""

    @abstractmethod
    def trim(self, *, max_age_s: float | None = None, max_len: int | None = None) -> int:
        """Drop the oldest events by age or count; returns how many were dropped."""

    @abstractmethod
    def close(self) -> None: ...
