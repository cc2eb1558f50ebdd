"""The ingestion pipeline every source feeds: parse -> validate -> dedup -> stream append, plus dead letters and counters.

Sources hand over batches of raw input (wire frames, REST transactions, replay lines); one
batch costs one dedup transaction, one stream append and one store write, which is what makes
hundreds of thousands of events a second reachable. Order of effects per batch: dedup marks,
then the stream append; if the append fails the marks are undone, so a retry of the same
input is not mistaken for a duplicate. Then the batch's dead letters and counts are recorded.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rtml.config import Settings
from rtml.contracts import DeadLetter, parse_batch, raw_text
from rtml.sources.deadletters import COUNTERS, open_ingest_store
from rtml.stream import Stream, open_stream
from rtml.stream.dedup import open_dedup

RawInput = bytes | str | Mapping[str, Any]
# Drop expired dedup entries from memory and disk this often during long runs.
_PURGE_EVERY_S = 600.0


@dataclass
class Counts:
    """What one batch (or one run) did; `received = valid + dead_letters`, `appended = valid - duplicates`."""

    received: int = 0
    valid: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    appended: int = 0

    def __iadd__(self, other: Counts) -> Counts:
        for name in COUNTERS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in COUNTERS}


class Ingestor:
    """Owns the dedup, stream and dead-letter/counter stores for one ingestion run."""

    def __init__(self, settings: Settings, stream: Stream | None = None) -> None:
        self.settings = settings
        self.stream = stream if stream is not None else open_stream(settings)
        self._own_stream = stream is None
        self.dedup = open_dedup(settings)
        self.store = open_ingest_store(settings)
        self.totals = Counts()
        self._last_purge = time.monotonic()

    def ingest(self, raws: Sequence[RawInput], source: str, ingest_time: int | None = None) -> Counts:
        """Run one batch through the pipeline; returns its counts (also added to the store)."""
        now = int(time.time() * 1000) if ingest_time is None else ingest_time
        rows, dead = parse_batch(raws, source, now)
        fresh = rows
        if rows:
            flags = self.dedup.first_seen([r[0] for r in rows])
            if not all(flags):
                fresh = [r for r, new in zip(rows, flags, strict=True) if new]
            if fresh:
                try:
                    self.stream.append_rows(fresh)
                except BaseException:
                    self.dedup.forget([r[0] for r in fresh])
                    raise
        counts = Counts(len(raws), len(rows), len(rows) - len(fresh), len(dead), len(fresh))
        self.store.record(dead, counts.as_dict())
        self.totals += counts
        if time.monotonic() - self._last_purge > _PURGE_EVERY_S:
            self.dedup.purge()
            self._last_purge = time.monotonic()
        return counts

    def refuse(self, raw: RawInput, reason: str, source: str) -> None:
        """Dead-letter input judged unusable before parsing (e.g. a REST body that is not a list of txs)."""
        letter = DeadLetter(raw_text(raw), reason, source, int(time.time() * 1000))
        counts = Counts(received=1, dead_letters=1)
        self.store.record([letter], counts.as_dict())
        self.totals += counts

    def close(self) -> None:
        self.dedup.close()
        self.store.close()
        if self._own_stream:
            self.stream.close()

    def __enter__(self) -> Ingestor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ingest_counters(settings: Settings) -> dict[str, float]:
    """Totals since the data directory was created: received, valid, duplicates, dead_letters, appended."""
    with open_ingest_store(settings) as store:
        return store.counters()
