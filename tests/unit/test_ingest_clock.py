"""Ingestion's guarded event clock (rtml.sources.clock): one lying line moves nothing, a real gap
moves it after CLOCK_CONFIRM_EVENTS events, and the dedup TTL's clock counts a gap as one jump."""

from __future__ import annotations

from rtml.contracts import CLOCK_CONFIRM_EVENTS
from rtml.sources.clock import IngestClock

H = 3_600_000
T = 1_727_740_800_000  # 2024-10-01
LIAR = 4_070_908_800_000  # 2099-01-01


def test_a_lying_line_first_or_later_never_moves_the_clock() -> None:
    clock = IngestClock(H)
    first = [LIAR, *(T + i for i in range(CLOCK_CONFIRM_EVENTS))]  # an empty store's first line lies
    assert clock.observe(first) == T + CLOCK_CONFIRM_EVENTS - 1
    assert clock.observe([T + H // 2, LIAR, T + H // 2 + 1]) == T + H // 2 + 1
    assert clock.observe([LIAR] * (CLOCK_CONFIRM_EVENTS - 1) + [T]) == T + H // 2 + 1  # refuted by T
    assert clock.now == clock.high == T + H // 2 + 1
    assert clock.observe([T - 10 * H]) == T + H // 2 + 1  # late events never move it back


def test_a_real_gap_moves_it_after_confirmation_and_counts_one_jump_for_the_ttl() -> None:
    clock = IngestClock(H, T, T)
    day = T + 24 * H
    assert clock.observe([day + i for i in range(CLOCK_CONFIRM_EVENTS - 1)]) == T  # not yet
    assert clock.observe([day + 100]) == T + H  # confirmed: a day later, one jump's worth elapsed
    assert clock.high == day and clock.now == day
    assert clock.observe([day + 30 * 60_000]) == T + H + 30 * 60_000  # then traffic counts in full
