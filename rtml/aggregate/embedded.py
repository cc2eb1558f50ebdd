"""The embedded aggregation engine (Kinesis Analytics / Flink in the AWS original).

Loop: read a batch of (tx_hash, event_time, fee_sat) from the stream after the stored offset,
run the window semantics (`windows.WindowState`), then commit in ONE SQLite transaction of
`<data_dir>/aggregate.sqlite`: the new input offset, the open windows, the watermark, the
counters, the late events and the emitted rows (into an outbox). Only then are the outbox
rows delivered to the sinks (idempotent upserts keyed by minute) and the outbox cleared.
A kill -9 at any instant leaves either the old state (the batch is re-read and re-applied
from the same offset, deterministically) or the new one (the outbox is re-delivered):
nothing lost, nothing counted twice. Events the clock guard holds back are part of the state
(`held_events`); its clock outliers wait in `outlier_outbox` (same transaction) until they are
in ingestion's dead-letter store: a crash between the two records an outlier twice, never
loses one. A stream lost under the engine (a Redis that restarted empty) is recovered by the
engine itself (`rtml.aggregate.recovery`), never by deleting this file.
"""

from __future__ import annotations

import fcntl
import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rtml.aggregate.engine_state import STATE_SCHEMA, counters_mirror
from rtml.aggregate.engine_state import aggregate_counters as aggregate_counters  # its callers' import
from rtml.aggregate.engine_state import trim_late_events as trim_late_events  # its callers' import
from rtml.aggregate.outliers import record_outliers
from rtml.aggregate.sinks import MinuteSink, aggregate_db_path, connect
from rtml.aggregate.windows import NO_WATERMARK, ClockGuard, LateEvent, Window, WindowState
from rtml.config import Settings
from rtml.contracts import MinuteFeatures
from rtml.outage import Outage
from rtml.stream import Offset, Stream, StreamReset, open_stream, redis_stream_key

log = logging.getLogger(__name__)
CONSUMER = "aggregator"
BATCH = 50_000
POLL_S = 0.005


class EngineError(RuntimeError):
    """The engine cannot start on this data directory; the message says why and what to do."""


class DeliveryError(RuntimeError):
    """A sink refused rows; they stay in the outbox and are offered again."""


@dataclass
class Progress:
    """What one `step` did, for progress bars and the live loop."""

    events: int
    emitted: int


class Engine:
    """One aggregator: exclusive owner of `<data_dir>/aggregate.sqlite`."""

    def __init__(
        self,
        settings: Settings,
        sinks: Sequence[MinuteSink],
        stream: Stream | None = None,
        batch: int = BATCH,
        on_reset: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.settings = settings
        # One engine per state database: a second one would re-apply the same offsets.
        self._lock = open(settings.path("aggregate.lock"), "w")  # held for the engine's life
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise EngineError(f"another aggregator is running on {settings.root}") from None
        self.stream = stream if stream is not None else open_stream(settings)
        self._own_stream = stream is None
        self._identity = self.stream.identity
        self.sinks = list(sinks)
        self.batch = batch
        self._conn = connect(aggregate_db_path(settings))
        self._conn.executescript(STATE_SCHEMA)
        if "stream_pos" not in {r[1] for r in self._conn.execute("PRAGMA table_info(engine_state)")}:
            self._conn.execute("ALTER TABLE engine_state ADD COLUMN stream_pos INTEGER")
        self.on_reset = on_reset
        self._resets_tried = 0.0  # monotonic time of the last failed delivery of a reset
        # Events consumed from this stream since its start (None: a state older than the count).
        self.stream_pos: int | None = 0
        lost_stream: str | None = None
        self.state, self.offset, lost_stream = self._load()
        self._held_stored = bool(self.state.guard and self.state.guard.held)
        self._undelivered = False
        self._published_at = 0.0
        self.outage = Outage(settings, "aggregate")
        self._mirror = counters_mirror(settings)
        if lost_stream is not None:
            self._reset(lost_stream, self._identity)
        try:
            self.deliver()  # rows a crash left between commit and delivery
        except DeliveryError as exc:
            log.warning("%s; will retry", exc)
        self.deliver_outliers()
        self.deliver_resets()

    # -- state -----------------------------------------------------------------------------
    def _load(self) -> tuple[WindowState, Offset | None, str | None]:
        """The committed state, its offset, and the name of the stream it belonged to when that
        stream is gone (recovered by `_reset`)."""
        lateness = int(self.settings.window.allowed_lateness_s * 1000)
        row = self._conn.execute(
            "SELECT stream, input_offset, watermark, max_event_time, next_emit, max_minute,"
            " events_in, late, duplicates, windows_emitted, stream_pos FROM engine_state WHERE id = 1"
        ).fetchone()
        guard = ClockGuard(int(self.settings.window.max_jump_s * 1000), lateness)
        for tx_hash, et, fee, seen in self._conn.execute(
            "SELECT tx_hash, event_time, fee_sat, seen FROM held_events ORDER BY seq"
        ):
            guard.held.append((tx_hash, et, fee))
            guard.seen.append(seen)
        state = WindowState(lateness_ms=lateness, guard=guard)
        if row is None:
            return state, None, None
        # States written before logs had an identity named the log by its place.
        legacy = ("sqlite:stream.sqlite", f"redis:{redis_stream_key(self.settings.namespace)}")
        lost = row[0] if row[0] != self._identity and row[0] not in legacy else None
        self.stream_pos = row[10]
        (state.watermark, state.max_event_time, state.next_emit, state.max_minute) = row[2:6]
        (state.events_in, state.late, state.duplicates, state.windows_emitted) = row[6:10]
        for minute, count, total, hashes in self._conn.execute("SELECT * FROM open_windows"):
            state.open[minute] = [count, total, set(hashes.split(",")) if hashes else set()]
        for minute, revision, count, total in self._conn.execute("SELECT * FROM provisional"):
            state.provisional[minute] = (revision, count, total)
        return state, row[1], lost

    def _commit(
        self, offset: Offset | None, late: list[LateEvent], windows: list[Window], reset: str | None = None
    ) -> None:
        """State, late events, emitted rows (and a stream reset): one transaction, all or nothing."""
        s = self.state
        conn = self._conn
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "INSERT OR REPLACE INTO engine_state VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    self._identity,
                    offset,
                    s.watermark,
                    s.max_event_time,
                    s.next_emit,
                    s.max_minute,
                    s.events_in,
                    s.late,
                    s.duplicates,
                    s.windows_emitted,
                    now,
                    self.stream_pos,
                ),
            )
            if reset is not None:
                conn.execute("INSERT INTO stream_resets (details) VALUES (?)", (reset,))
            # Only the windows touched since the last commit: live mode commits every few ms.
            changed = [m for m in s.dirty if m in s.open]
            conn.executemany(
                "DELETE FROM open_windows WHERE minute = ?", [(m,) for m in s.dirty if m not in s.open]
            )
            conn.executemany(
                "INSERT OR REPLACE INTO open_windows VALUES (?, ?, ?, ?)",
                [(m, s.open[m][0], s.open[m][1], ",".join(s.open[m][2])) for m in changed],
            )
            conn.execute("DELETE FROM provisional")
            conn.executemany(
                "INSERT INTO provisional VALUES (?, ?, ?, ?)",
                [(m, *p) for m, p in s.provisional.items()],
            )
            if late:
                conn.executemany(
                    "INSERT INTO late_events (tx_hash, event_time, fee_sat, watermark, reason, recorded_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    [(e.tx_hash, e.event_time, e.fee_sat, e.watermark, e.reason, now) for e in late],
                )
            if windows:
                conn.executemany(
                    "INSERT INTO outbox (minute, tx_count, fee_total_sat, revision) VALUES (?, ?, ?, ?)",
                    [(w.minute, w.tx_count, w.fee_total_sat, w.revision) for w in windows],
                )
            guard = s.guard
            if guard is not None and (guard.held or guard.outliers or self._held_stored):
                conn.execute("DELETE FROM held_events")
                conn.executemany(
                    "INSERT INTO held_events VALUES (?, ?, ?, ?, ?)",
                    [(i, *r, n) for i, (r, n) in enumerate(zip(guard.held, guard.seen, strict=True))],
                )
                conn.executemany(
                    "INSERT INTO outlier_outbox (tx_hash, event_time, fee_sat, reason) VALUES (?, ?, ?, ?)",
                    [(e.tx_hash, e.event_time, e.fee_sat, e.reason) for e in guard.outliers],
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        s.dirty.clear()
        if s.guard is not None:
            self._held_stored = bool(s.guard.held)
            if s.guard.outliers:
                s.guard.outliers = []
                self.deliver_outliers()
        self.offset = offset
        if now - self._published_at >= 1:
            self._publish_offset()
        if self._mirror is not None:
            self._mirror.set(self.counters())

    def _publish_offset(self) -> None:
        """Mirror the offset into the stream's consumer offsets (for lag and safe trimming).

        At most once a second: the authoritative offset is the one in the state transaction.
        """
        if self.offset is not None:
            self.stream.commit(CONSUMER, self.offset)
        self._published_at = time.time()

    def deliver(self) -> int:
        """Hand the outbox to every sink, then clear it; safe to repeat after any crash."""
        rows = self._conn.execute(
            "SELECT seq, minute, tx_count, fee_total_sat, revision FROM outbox ORDER BY seq"
        ).fetchall()
        if not rows:
            return 0
        # Several revisions of one minute may wait in the outbox: the latest (last) wins.
        latest = {m: MinuteFeatures.from_window(m, c, t, r) for _, m, c, t, r in rows}
        features = [latest[m] for m in sorted(latest)]
        self._undelivered = True
        for sink in self.sinks:
            try:
                sink.upsert(features)
            except Exception as exc:
                raise DeliveryError(f"{type(sink).__name__} refused {len(features)} rows: {exc}") from exc
        self._conn.execute("DELETE FROM outbox WHERE seq <= ?", (rows[-1][0],))
        self._undelivered = False
        return len(features)

    def deliver_outliers(self) -> int:
        """Move clock outliers from the outbox into the dead-letter store, then clear them;
        they stay for the next try while the store is down."""
        rows = self._conn.execute(
            "SELECT seq, tx_hash, event_time, fee_sat, reason FROM outlier_outbox ORDER BY seq"
        ).fetchall()
        if not rows:
            return 0
        try:
            record_outliers(self.settings, [r[1:] for r in rows], self.state.watermark)
        except Exception as exc:  # noqa: BLE001 - they wait in the outbox
            log.warning("could not dead-letter %d clock outliers (%s); will retry", len(rows), exc)
            return 0
        self._conn.execute("DELETE FROM outlier_outbox WHERE seq <= ?", (rows[-1][0],))
        return len(rows)

    def counters(self) -> dict[str, float]:
        s = self.state
        wm = s.watermark if s.watermark != NO_WATERMARK else None
        return {
            "events_in": float(s.events_in),
            "late": float(s.late),
            "duplicates": float(s.duplicates),
            "windows_emitted": float(s.windows_emitted),
            "open_windows": float(len(s.open)),
            "watermark": wm / 1000 if wm is not None else 0.0,
            "watermark_lag_s": time.time() - wm / 1000 if wm is not None else 0.0,
        }

    # -- processing ------------------------------------------------------------------------
    def _reset(self, old: str, new: str) -> int:
        """The stream `old` is gone: record what was lost, re-derive the affected minutes from the
        open windows and the archive, adopt `new` from its start (see `rtml.aggregate.recovery`)."""
        from rtml.aggregate.recovery import loss, rederive

        report = loss(self.settings, old, new, self.offset, self.stream_pos, self.state)
        rederive(self.settings, report, self.state)
        windows = self.state.pop_final()
        self._identity, self.stream_pos = new, 0
        self._commit(None, [], windows, reset=json.dumps(report))
        log.warning("stream lost and recovered: %s", report)
        emitted = self.deliver() if windows or self._undelivered else 0
        self.deliver_resets()
        return emitted

    def deliver_resets(self) -> None:
        """Recorded stream resets to `on_reset`; retried at most every 10 s while it fails."""
        if self.on_reset is None or (self._resets_tried and time.monotonic() - self._resets_tried < 10):
            return
        from rtml.aggregate.recovery import deliver_resets

        self._resets_tried = 0.0 if deliver_resets(self._conn, self.on_reset) else time.monotonic()

    def step(self) -> Progress:
        """Read one batch, apply it, commit, deliver."""
        try:
            rows, last = self.stream.read_slim(self.offset, self.batch)
        except StreamReset as exc:
            reset = self._reset(exc.old, exc.new)
            step = self.step()  # the new stream, from its start
            return Progress(step.events, step.emitted + reset)
        if not rows:
            if self._resets_tried:
                self.deliver_resets()
            return Progress(0, self.deliver() if self._undelivered else 0)
        if self.stream_pos is not None:
            self.stream_pos += len(rows)
        late = self.state.add(rows)
        windows = self.state.pop_final()
        self._commit(last, late, windows)
        emitted = self.deliver() if windows or self._undelivered else 0
        return Progress(len(rows), emitted)

    def drain(self, on_progress: Callable[[Progress], None] | None = None) -> int:
        """Process everything in the stream, then close every window; returns rows emitted."""
        emitted = 0
        while (p := self.step()).events:
            emitted += p.emitted
            if on_progress is not None:
                on_progress(p)
        late = self.state.settle()
        windows = self.state.drain()
        self._commit(self.offset, late, windows)
        return emitted + self.deliver()

    def run_live(self, stop: threading.Event, poll_s: float = POLL_S) -> None:
        """Follow the stream until `stop` is set; a quiet stream still closes windows.

        After `idle_timeout_s` without events the watermark advances with the wall clock:
        the event-time clock is taken to have moved on by the wall time since the last event.
        """
        idle_ms = self.settings.window.idle_timeout_s * 1000
        lateness = self.state.lateness_ms
        last_event = time.monotonic()
        backoff = 0.0
        while not stop.is_set():
            try:
                if self.step().events:
                    last_event = time.monotonic()
                    backoff = 0.0
                    self.outage.recovered()
                    continue
                quiet_ms = (time.monotonic() - last_event) * 1000
                if quiet_ms >= idle_ms:
                    if self.state.max_event_time == NO_WATERMARK:
                        # A quiet stream of fewer events than corroboration needs: judge them now.
                        late = self.state.settle()
                    else:
                        late = self.state.advance(self.state.max_event_time + int(quiet_ms) - lateness)
                    windows = self.state.pop_final()
                    if windows or late or (self.state.guard and self.state.guard.outliers):
                        self._commit(self.offset, late, windows)
                        self.deliver()
                for sink in self.sinks:  # what a sink spooled during an outage: no write may follow
                    sink.flush()
                backoff = 0.0
            except DeliveryError as exc:
                # The state is committed and the rows wait in the outbox: keep aggregating and
                # retry delivery with each step, backing off while the sink stays down.
                backoff = min(max(backoff * 2, 0.5), 30.0)
                wait = self.outage.ride(exc) or backoff
                log.warning("%s; retrying in %.1f s (nothing is lost: rows wait in the outbox)", exc, wait)
                stop.wait(wait)
                continue
            except Exception as exc:
                # The stream's Redis is down: nothing uncommitted was applied (a step reads, then
                # commits locally, then publishes), so the next step picks up where this one stood.
                if (retry := self.outage.ride(exc)) is None:
                    raise
                self._undelivered = True  # a commit may have come before the failure: deliver
                # Blind, not quiet: an outage must not advance the watermark by its wall time
                # (what the ingester held meanwhile would then arrive late).
                last_event = time.monotonic()
                stop.wait(retry)
                continue
            self.outage.recovered()
            stop.wait(poll_s)

    def close(self) -> None:
        self._publish_offset()
        self._conn.close()
        if self._own_stream:
            self.stream.close()
        for sink in self.sinks:
            sink.close()
        if self._mirror is not None:
            self._mirror.close()
        self._lock.close()


def run(
    settings: Settings,
    *,
    drain: bool,
    on_progress: Callable[[Progress], None] | None = None,
    batch: int = BATCH,
    sinks: Sequence[MinuteSink] | Callable[[], Sequence[MinuteSink]],
    on_reset: Callable[[dict[str, Any]], None] | None = None,
) -> int:
    """`rtml aggregate`: drain and exit, or run live until SIGTERM/SIGINT (committing on stop).

    `sinks` (the caller's) may be a factory, called once the stop signals are set: live sinks
    take seconds to open (Feast)."""
    stop = threading.Event()
    if not drain:
        # Before the engine opens: a stop asked for while it starts is honoured, not lost.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    engine = Engine(settings, sinks=sinks() if callable(sinks) else sinks, batch=batch, on_reset=on_reset)
    try:
        if drain:
            return engine.drain(on_progress)
        engine.run_live(stop)
        return 0
    finally:
        engine.close()
