"""The ingestion pipeline every source feeds: parse -> validate -> dedup -> stream append, plus dead letters and counters.

Sources hand over batches of raw input (wire frames, REST transactions, replay lines); one
batch costs one dedup check, one stream append, one dedup mark and one store write. Order of
effects per batch: check, append, then mark, so a crash (even kill -9) at any point loses
nothing: unmarked events are appended again when re-sent, and the aggregation engine counts a
repeated tx_hash once. Then the batch's dead letters and counts are recorded. Dedup entries
expire and dead letters are stamped by ingestion's guarded event clock (rtml.sources.clock),
never by wall time, so a replay at any speed holds and ages them as live does.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from rtml.config import Settings
from rtml.contracts import DeadLetter, Oversized, Row, dead_letter, parse_batch
from rtml.outage import Outage
from rtml.sources.buffer import Held, OutageBuffer
from rtml.sources.clock import IngestClock
from rtml.sources.deadletters import COUNTERS, open_ingest_store
from rtml.stream import Stream, open_stream
from rtml.stream.dedup import open_dedup
from rtml.stream.ledger import open_ledger

log = logging.getLogger(__name__)
RawInput = bytes | str | Mapping[str, Any] | Oversized
# Sources with a wall clock: they stamp `source` and `ingest_time` themselves and refuse events
# more than `ingest.max_future_s` ahead of it. Replays and synthetic traffic have no such clock
# (the window semantics' clock guard protects the stream from them).
LIVE_SOURCES = ("ws", "rest")
# Batches parsed ahead of the store (each is one process round trip).
_PARSE_AHEAD = 2
# Drop expired dedup entries each time the ingest clock has moved this share of the TTL, so
# memory holds about one TTL of entries however fast the clock runs (a replay at max speed).
_PURGES_PER_TTL = 12
_hash, _time = itemgetter(0), itemgetter(1)


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
        # Where the stream can be lost under its readers (Redis), what each batch appended.
        self.ledger = open_ledger(settings)
        self.totals = Counts()
        # Store failures a replay or synthetic run survived (logged and retried).
        self.errors = 0
        # Called after every batch (progress displays).
        self.on_batch: Callable[[], None] | None = None
        # Riding out a Redis outage: live batches wait in `buffer`, replays wait in `_store_retrying`.
        self.outage = Outage(settings, "ingest")
        self.buffer = OutageBuffer(settings)
        self._retry_at = 0.0
        self._show_buffer()
        # Ingestion's guarded event clock (rtml.sources.clock), resumed from the dedup store: dedup
        # entries expire by its `elapsed`, dead letters are stamped with its `now`.
        self.clock = IngestClock(int(settings.window.max_jump_s * 1000), self.dedup.event_ms, self.dedup.clock_ms)
        self._purge_every = max(1, self.dedup.ttl_ms // _PURGES_PER_TTL)
        self._purged_at = self.dedup.clock_ms

    def _max_future_ms(self, source: str) -> int | None:
        return int(self.settings.ingest.max_future_s * 1000) if source in LIVE_SOURCES else None

    def ingest(self, raws: Sequence[RawInput], source: str, ingest_time: int | None = None) -> Counts:
        """Run one batch through the pipeline; returns its counts (also added to the store).

        Parsing never raises; a store failure does (the caller retries the same batch: appended
        but unmarked events are appended again, and the engine counts a tx_hash once)."""
        now = int(time.time() * 1000) if ingest_time is None else ingest_time
        parsed = parse_batch(
            raws,
            source,
            now,
            max_future_ms=self._max_future_ms(source),
            dead_letter_max_bytes=self.settings.ingest.dead_letter_max_bytes,
        )
        return self._store(len(raws), *parsed)

    def ingest_all(self, batches: Iterable[Sequence[RawInput]], source: str) -> Counts:
        """Ingest many batches, parsing ahead in a second process while this one dedups and appends.

        Parsing is pure Python and holds the GIL, so it gets a process (and a core) of its own;
        results come back in batch order, at most `_PARSE_AHEAD` batches ahead of the store.
        The worker is forked (no re-import: it starts at once) and only ever runs `parse_batch`,
        which touches none of the parent's connections, threads or locks.
        """
        run = Counts()
        future = self._max_future_ms(source)
        keep = self.settings.ingest.dead_letter_max_bytes
        pending: deque[tuple[int, Future[tuple[list[Row], list[DeadLetter]]]]] = deque()
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
            for raws in batches:
                now = int(time.time() * 1000)
                pending.append(
                    (
                        len(raws),
                        pool.submit(
                            parse_batch,
                            list(raws),
                            source,
                            now,
                            max_future_ms=future,
                            dead_letter_max_bytes=keep,
                        ),
                    )
                )
                if len(pending) > _PARSE_AHEAD:
                    received, parsed = pending.popleft()
                    run += self._store_retrying(received, *parsed.result())
            while pending:
                received, parsed = pending.popleft()
                run += self._store_retrying(received, *parsed.result())
        return run

    def _store_retrying(self, received: int, rows: list[Row], dead: list[DeadLetter]) -> Counts:
        """`_store` until it succeeds: a store that is down (locked, restarting) delays a replay,
        it does not end it (back-pressure: the replay waits). Logged and counted each time; an
        unreachable service is retried within `outage.BACKOFF_MAX_S`, anything else backs off up
        to 30 s."""
        delay = 0.5
        while True:
            try:
                counts = self._store(received, rows, dead)
                self.outage.recovered()
                return counts
            except Exception as exc:  # noqa: BLE001 - retried, never swallowed silently
                self.errors += 1
                wait = self.outage.ride(exc)
                log.warning(
                    "storing a batch of %d failed (%s: %s); retrying in %.1f s",
                    received,
                    type(exc).__name__,
                    exc,
                    delay if wait is None else wait,
                )
                time.sleep(delay if wait is None else wait)
                delay = min(delay * 2, 30.0)

    def ingest_live(self, raws: Sequence[RawInput], source: str) -> Counts | None:
        """`ingest` for frames that cannot be asked for again (ws, rest): while a service is
        unreachable the batch joins the outage buffer (None is returned) and the caller goes on
        receiving; once it answers, the buffer is stored first, in arrival order. Any other
        failure raises, as `ingest` does."""
        now = int(time.time() * 1000)
        if self.outage.down and time.monotonic() < self._retry_at:
            self._hold(raws, source, now)
            return None
        try:
            if len(self.buffer) or self.buffer.unreported:
                self.buffer.drain(self._store_held)
                self._report_drops()
            counts = self.ingest(raws, source, now)
        except Exception as exc:
            wait = self.outage.ride(exc)
            if wait is None:
                raise
            self._retry_at = time.monotonic() + wait
            self._hold(raws, source, now)
            return None
        self.outage.recovered()
        self._show_buffer()
        return counts

    def _store_held(self, held: Held) -> None:
        source, ingest_time, raws = held
        self.ingest(raws, source, ingest_time)

    def _hold(self, raws: Sequence[RawInput], source: str, now: int) -> None:
        if raws and not self.buffer.put(raws, source, now):
            log.warning("outage buffer full: %d events dropped (%d in all)", len(raws), self.buffer.dropped)
        self._show_buffer()

    def _show_buffer(self) -> None:
        """The buffer's size and losses in the ingester's health file (`rtml status`)."""
        extra = {"buffered_events": len(self.buffer), "buffer_dropped": self.buffer.dropped}
        if extra != self.outage.extra:
            self.outage.extra = extra
            self.outage.write()

    def _report_drops(self) -> None:
        """Add what the buffer dropped to the ingest counters (`buffer_dropped`) once they take it."""
        if n := self.buffer.unreported:
            self.store.record([], {"buffer_dropped": n})
            self.buffer.reported(n)

    def _store(self, received: int, rows: list[Row], dead: list[DeadLetter]) -> Counts:
        fresh = rows
        clock = self.clock.observe(list(map(_time, rows)))
        if rows:
            assert clock is not None  # observe() of any event gives a clock
            flags = self.dedup.unseen(list(map(_hash, rows)), clock)
            if not all(flags):
                fresh = [r for r, new in zip(rows, flags, strict=True) if new]
            if fresh:
                self.stream.append_rows(fresh)
                self.dedup.mark(list(map(_hash, fresh)), clock, self.clock.now)
                if self.ledger is not None and self.stream.last_append is not None:
                    self.ledger.record(self.stream.last_append, fresh)
        counts = Counts(received, len(rows), len(rows) - len(fresh), len(dead), len(fresh))
        self.store.record(dead, counts.as_dict(), self.clock.now)
        self.totals += counts
        if clock is not None and (self._purged_at is None or clock - self._purged_at >= self._purge_every):
            self.dedup.purge(clock)
            self._purged_at = clock
        if self.on_batch is not None:
            self.on_batch()
        return counts

    def refuse(self, raw: RawInput, reason: str, source: str) -> None:
        """Dead-letter input judged unusable before parsing (e.g. a REST body that is not a list of txs)."""
        now = int(time.time() * 1000)
        letter = dead_letter(raw, reason, source, now, self.settings.ingest.dead_letter_max_bytes)
        counts = Counts(received=1, dead_letters=1)
        self.store.record([letter], counts.as_dict(), self.clock.now)
        self.totals += counts

    def close(self) -> None:
        self.buffer.spill()  # a stop during an outage: the next ingester delivers it
        self._show_buffer()
        self.dedup.close()
        self.store.close()
        if self.ledger is not None:
            self.ledger.close()
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
