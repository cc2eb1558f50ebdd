"""Ingestion's own event clock: the high-water event time of accepted events, guarded.

Two things age by it rather than by wall time, so a replay at any speed behaves like live:
dedup entries (an entry expires once this clock passes its event time + `ingest.dedup_ttl_s`)
and dead letters (each is stamped with it when refused, since a refused frame has no event time
to trust, and retention trims them by that stamp against the pipeline clock).

A single event must not move it far: a hostile replay line dated 2099 would otherwise expire
every dedup entry at once and, for good, make every later one expire on arrival. So it follows
the window semantics' rule (`rtml.aggregate.windows.ClockGuard`): it advances freely within
`window.max_jump_s` of where it is, and jumps further only when `CLOCK_CONFIRM_EVENTS`
accepted events in a row all lie beyond that (a real gap in a replay), and then only to the
earliest of them. Events behind it never move it. Live sources also bound every event by
`ingest.max_future_s` ahead of the wall clock. The first events of an empty store count as
a jump: one lying first line cannot set the clock either.
"""

from __future__ import annotations

from collections.abc import Sequence

from rtml.contracts import CLOCK_CONFIRM_EVENTS


class IngestClock:
    """The guarded high-water mark (`high`, None before any confirmed event), in epoch ms, and
    `elapsed`, the dedup TTL's clock: it moves as `high` does, but a confirmed jump counts as at
    most `max_jump_ms`. So dedup entries outlive a real gap (the REST gap fill re-sends what came
    before an outage; the 2020 recording jumps a day within its first 300 frames), and still
    expire once a TTL of traffic has followed it: memory stays about one TTL of events."""

    def __init__(self, max_jump_ms: int, high: int | None = None, elapsed: int | None = None) -> None:
        self.max_jump_ms = max_jump_ms
        self.high = high
        self.elapsed = high if elapsed is None else elapsed
        # Consecutive accepted events beyond the jump, not yet confirmed: their event times.
        self._ahead: list[int] = []

    @property
    def now(self) -> int | None:
        """The event clock to stamp by: `high`, or before any is confirmed (an empty store's
        first events) the earliest event still waiting, which a lying future line cannot raise."""
        if self.high is None and self._ahead:
            return min(self._ahead)
        return self.high

    @property
    def ttl_now(self) -> int | None:
        """`elapsed`, or before any event is confirmed, `now`."""
        return self.now if self.elapsed is None else self.elapsed

    def _advance(self, to: int) -> None:
        if self.high is None or self.elapsed is None:
            self.high = self.elapsed = to
        elif to > self.high:
            self.elapsed += min(to - self.high, self.max_jump_ms)
            self.high = to

    def observe(self, times: Sequence[int]) -> int | None:
        """Advance by a batch's event times (stream order); returns `ttl_now` after it."""
        if not times:
            return self.ttl_now
        top = max(times)
        high = self.high
        if high is not None and top - high <= self.max_jump_ms:  # the common case: no jump in sight
            self._ahead.clear()
            self._advance(top)
            return self.elapsed
        for et in times:
            high = self.high
            if high is not None and et - high <= self.max_jump_ms:
                self._ahead.clear()
                self._advance(et)
                continue
            self._ahead.append(et)
            if len(self._ahead) >= CLOCK_CONFIRM_EVENTS:  # corroborated: a real gap
                self._advance(min(self._ahead))
                self._ahead.clear()
        return self.ttl_now
