"""The window semantics of DESIGN.md, engine-free: pure state, no I/O, deterministic.

- Tumbling 1-minute windows on event time, aligned to the UTC minute (epoch ms, minute start).
- Watermark = max event time seen − allowed lateness, advanced event by event, so the result
  never depends on how the input was cut into batches (a restart after a crash re-reads
  from a different batch boundary and must land on the same state).
- An event strictly behind the watermark is late: recorded with its reason, counted, not added.
- A window is final when the watermark reaches its end. Minutes between the first and the
  last seen minute are emitted even when empty.
- A duplicate (same tx_hash) of an event already in an open window counts once. Ingestion
  dedups upstream; this covers what slips through at-least-once delivery (an ingestor killed
  between appending and recording its dedup keys re-sends). A duplicate of a window already
  final is simply late.
- `drain()` emits every window up to the last seen minute as if the watermark had reached the
  end, but keeps their contents and the real watermark: if more events arrive later (a backfill
  followed by live running), a drained window that changes is re-emitted with revision + 1.
- Clock protection (`ClockGuard`): one event must not move the watermark by itself. An event
  more than `max_jump_ms` ahead of the watermark (every event, before there is one) is held
  back, in stream order. A later event more than `max_jump_ms` behind a held one refutes it:
  that one is a clock outlier (a frame stamped 2033 among 2024 traffic is refuted by the very
  next event). A held event that CLOCK_CONFIRM_EVENTS later events have not refuted is
  confirmed: the stream really moved on (a replay's real gap, however sparse the traffic after
  it), and it is applied, oldest first, with any held event no longer ahead of the watermark
  that leaves. At a drain (end of input) held events are outliers, unless there is no
  watermark yet (nothing contradicts them); an idle advance applies held events the watermark
  has come within `max_jump_ms` of. Outliers never touch a window or the watermark: the engine
  dead-letters them. So zero-filled minutes come only from real gaps of a stream that moved on.
- Sums cannot overflow: Python ints here; every fee is at most 2.1e15 sat (contracts), and a
  minute whose total would pass 2^63 - 1 (more than 4,392 transactions each claiming about all
  bitcoin there will ever be) refuses the event that would take it there as late, so every
  stored sum fits the int64 of SQLite, PostgreSQL BIGINT, Feast Int64 and Spark's LongType.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rtml.contracts import CLOCK_CONFIRM_EVENTS, MINUTE_MS

NO_WATERMARK = -(1 << 62)
# The largest per-minute fee total any store holds (int64).
MAX_TOTAL_SAT = (1 << 63) - 1
# (tx_hash, event_time, fee_sat, ...): the guard reads only these and keeps whole rows as given.
SlimRow = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Window:
    """One emitted window: its start (epoch ms), sums and revision."""

    minute: int
    tx_count: int
    fee_total_sat: int
    revision: int


@dataclass(frozen=True, slots=True)
class LateEvent:
    tx_hash: str
    event_time: int
    fee_sat: int
    watermark: int
    reason: str


@dataclass
class ClockGuard:
    """The clock protection of the window semantics (module docstring), shared by both engines:
    the embedded engine runs it inside `WindowState.add`, the Spark job in its stream source,
    before Spark's own watermark sees an event. The caller owns the watermark and passes it in.
    """

    max_jump_ms: int
    lateness_ms: int
    # Rows (tx_hash, event_time, fee_sat, ...) held back, in stream order, and for each how many
    # later events have come without refuting it.
    held: list[SlimRow] = field(default_factory=list)
    seen: list[int] = field(default_factory=list)
    # Judged outliers not yet taken by the engine (to dead-letter), with their reasons.
    outliers: list[LateEvent] = field(default_factory=list)

    def needs(self, event_time: int, watermark: int) -> bool:
        """Whether this event must go through `judge` (the fast path skips it)."""
        return bool(self.held) or event_time - watermark > self.max_jump_ms

    def judge(self, row: SlimRow, watermark: int) -> list[SlimRow]:
        """The rows to apply now, in the order to apply them (released held ones, `row`)."""
        jump = self.max_jump_ms
        et = row[1]
        if self.held:
            refuted = [h for h in self.held if et < h[1] - jump]
            if refuted:
                self._outlie(
                    refuted, watermark, f"a later event was {(refuted[0][1] - et) / 1000:.0f} s behind it"
                )
                kept = [(h, n) for h, n in zip(self.held, self.seen, strict=True) if et >= h[1] - jump]
                self.held = [h for h, _ in kept]
                self.seen = [n for _, n in kept]
            self.seen = [n + 1 for n in self.seen]
        out, wm = self._release(watermark)
        if et - wm > jump:
            self.held.append(row)
            self.seen.append(0)
            return out
        out.append(row)
        more, _ = self._release(max(wm, et - self.lateness_ms))
        return out + more

    def _release(self, watermark: int) -> tuple[list[SlimRow], int]:
        """Held events, oldest first, that are confirmed or no longer ahead; and the watermark
        their application leaves."""
        out: list[SlimRow] = []
        while self.held and (
            self.seen[0] >= CLOCK_CONFIRM_EVENTS or self.held[0][1] - watermark <= self.max_jump_ms
        ):
            row = self.held.pop(0)
            self.seen.pop(0)
            out.append(row)
            watermark = max(watermark, row[1] - self.lateness_ms)
        return out, watermark

    def settle(self, watermark: int) -> list[SlimRow]:
        """End of input (a drain): no confirmation is coming, so held events are outliers; before
        any watermark (a stream of fewer events than confirmation needs) nothing contradicts them."""
        held, self.held, self.seen = self.held, [], []
        if watermark == NO_WATERMARK:
            return held
        self._outlie(held, watermark, "the input ended before later events confirmed it")
        return []

    def catch_up(self, watermark: int) -> list[SlimRow]:
        """After an idle advance: held events the watermark came within `max_jump_ms` of."""
        return self._release(watermark)[0]

    def _outlie(self, rows: Sequence[SlimRow], watermark: int, why: str) -> None:
        for tx_hash, et, fee, *_ in rows:
            ahead = (
                "before any watermark"
                if watermark == NO_WATERMARK
                else f"{(et - watermark) / 1000:.0f} s ahead of the watermark"
            )
            reason = f"clock outlier: {ahead} (window.max_jump_s = {self.max_jump_ms / 1000:g}); {why}"
            self.outliers.append(LateEvent(tx_hash, et, fee, watermark, reason))


@dataclass
class WindowState:
    """Everything the engine must persist to continue exactly where it stopped."""

    lateness_ms: int
    watermark: int = NO_WATERMARK
    max_event_time: int = NO_WATERMARK
    # The first minute not yet emitted final (None before the first event).
    next_emit: int | None = None
    max_minute: int | None = None
    # minute -> [tx_count, fee_total_sat, set of tx_hash]
    open: dict[int, list[Any]] = field(default_factory=dict)
    # Windows emitted by a drain but not final yet: minute -> (revision, tx_count, fee_total_sat).
    provisional: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    # Minutes whose open window may have changed since the engine last persisted them.
    dirty: set[int] = field(default_factory=set)
    events_in: int = 0
    late: int = 0
    duplicates: int = 0
    windows_emitted: int = 0
    # The clock protection; None where the input was already guarded (the Spark driver).
    guard: ClockGuard | None = None

    def add(self, rows: Sequence[SlimRow]) -> list[LateEvent]:
        """Add (tx_hash, event_time, fee_sat) rows in stream order; returns the late ones.

        Rows the clock guard holds wait in it; its outliers collect in `guard.outliers`.
        """
        self.events_in += len(rows)
        guard = self.guard
        if guard is None:
            return self._apply(rows)
        late: list[LateEvent] = []
        lateness = self.lateness_ms
        wm = self.watermark
        start = 0
        for i, (_, et, _) in enumerate(rows):
            if guard.held or et - wm > guard.max_jump_ms:
                late += self._apply(rows[start:i])
                late += self._apply(guard.judge(rows[i], self.watermark))
                wm = self.watermark
                start = i + 1
            elif et - lateness > wm:
                wm = et - lateness  # as `_apply` will move it: late and duplicate rows never do
        late += self._apply(rows[start:] if start else rows)
        return late

    def settle(self) -> list[LateEvent]:
        """Let the guard decide what it holds now (end of input); returns late rows, if any."""
        return self._apply(self.guard.settle(self.watermark)) if self.guard is not None else []

    def _apply(self, rows: Sequence[SlimRow]) -> list[LateEvent]:
        """The hot path of the engine (hundreds of thousands of rows a second): locals only, one
        dict lookup per event while events stay in the same minute."""
        wm = self.watermark
        top = self.max_event_time
        lateness = self.lateness_ms
        windows = self.open
        dirty = self.dirty
        late: list[LateEvent] = []
        cur_minute = None
        cur: list[Any] = [0, 0, set()]
        seen: set[str] = cur[2]
        dups = 0
        for tx_hash, et, fee in rows:
            if et < wm:
                late.append(LateEvent(tx_hash, et, fee, wm, f"late: {wm - et} ms behind the watermark"))
                continue
            minute = et - et % MINUTE_MS
            if minute != cur_minute:
                found = windows.get(minute)
                if found is None:
                    found = windows[minute] = [0, 0, set()]
                    if self.next_emit is None or minute < self.next_emit:
                        self.next_emit = minute
                    if self.max_minute is None or minute > self.max_minute:
                        self.max_minute = minute
                cur = found
                seen = cur[2]
                cur_minute = minute
                dirty.add(minute)
            if tx_hash in seen:
                dups += 1
                continue
            if cur[1] + fee > MAX_TOTAL_SAT:  # see the module docstring: sums stay int64
                late.append(
                    LateEvent(
                        tx_hash, et, fee, wm, f"overflow: the minute's fee total would pass {MAX_TOTAL_SAT}"
                    )
                )
                continue
            seen.add(tx_hash)
            cur[0] += 1
            cur[1] += fee
            if et > top:
                top = et
                if et - lateness > wm:
                    wm = et - lateness
        self.watermark = wm
        self.max_event_time = top
        self.late += len(late)
        self.duplicates += dups
        return late

    def advance(self, watermark: int) -> list[LateEvent]:
        """Move the watermark forward without an event (idle advance in live mode); held events
        it comes within `max_jump_ms` of are applied (returns late rows, if any)."""
        if watermark > self.watermark:
            self.watermark = watermark
        return self._apply(self.guard.catch_up(self.watermark)) if self.guard is not None else []

    def pop_final(self) -> list[Window]:
        """Windows the watermark has passed, oldest first, each emitted once."""
        out: list[Window] = []
        if self.next_emit is None or self.max_minute is None:
            return out
        minute = self.next_emit
        while minute + MINUTE_MS <= self.watermark and minute <= self.max_minute:
            count, total, _ = self.open.pop(minute, (0, 0, None))
            self.dirty.add(minute)
            window = self._revise(minute, count, total, final=True)
            if window is not None:
                out.append(window)
            minute += MINUTE_MS
        self.next_emit = minute
        self.windows_emitted += len(out)
        return out

    def drain(self) -> list[Window]:
        """Final windows, then every remaining window up to the last seen minute, provisionally.

        Call `settle()` first where a guard holds events (the engine records its late rows)."""
        out = self.pop_final()
        if self.next_emit is None or self.max_minute is None:
            return out
        provisional: list[Window] = []
        for minute in range(self.next_emit, self.max_minute + MINUTE_MS, MINUTE_MS):
            count, total, _ = self.open.get(minute, (0, 0, None))
            window = self._revise(minute, count, total, final=False)
            if window is not None:
                provisional.append(window)
        self.windows_emitted += len(provisional)
        return out + provisional

    def _revise(self, minute: int, count: int, total: int, *, final: bool) -> Window | None:
        """The row to emit for a window, or None when a drain already emitted exactly this."""
        before = self.provisional.pop(minute, None) if final else self.provisional.get(minute)
        if before is not None and before[1:] == (count, total):
            return None
        revision = before[0] + 1 if before is not None else 1
        if not final:
            self.provisional[minute] = (revision, count, total)
        return Window(minute, count, total, revision)
