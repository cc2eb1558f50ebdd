"""Dedup's conformance suite (rtml.stream.dedup.Dedup): every backend class in BACKENDS passes it.

First seen vs duplicate (within a batch too), expiry on the event clock (never wall time: the
whole suite runs in well under one TTL of wall time), purge, marks and clocks that survive a
restart and are seen by another open instance, and a `close()` that releases every file and socket.
"""

from __future__ import annotations

from typing import Any

from conformance_kit import Backend, Case, backend_cases, held, implementations, leaked

from rtml.stream.dedup import Dedup, RedisDedup, SqliteDedup, open_dedup

TTL_S = 60
TTL_MS = TTL_S * 1000
T0 = 1_000_000  # an event-clock reading (ms), aligned to the Redis buckets (TTL/12 wide)

BACKENDS: dict[type[Dedup], Backend[Dedup]] = {
    SqliteDedup: Backend("embedded", lambda s: SqliteDedup(str(s.path("dedup.sqlite")), TTL_S)),
    RedisDedup: Backend("services", lambda s: RedisDedup(s.redis_url, s.namespace, TTL_S)),
}
case = backend_cases(BACKENDS)


def h(i: int) -> str:
    """A transaction hash: 64 hex digits, as the Redis backend's keys expect."""
    return f"{i:064x}"


def test_every_backend_class_is_in_the_suite() -> None:
    assert implementations(Dedup, "rtml.stream") == set(BACKENDS)


def test_the_factory_picks_the_class_for_its_profile(case: Case[Dedup]) -> None:
    with open_dedup(case.settings) as dedup:
        assert type(dedup) is case.cls


def test_the_first_sighting_is_new_and_a_repeat_is_a_duplicate(case: Case[Dedup]) -> None:
    dedup = case.open()
    assert dedup.unseen([], T0) == []
    assert dedup.unseen([h(1), h(2), h(1)], T0) == [True, True, False]  # the first of repeats counts
    assert dedup.unseen([h(1), h(2)], T0) == [True, True]  # asking marks nothing
    dedup.mark([h(1), h(2)], T0, event_ms=T0 - 5)
    assert dedup.unseen([h(1), h(3), h(2), h(3)], T0 + 1) == [False, True, False, False]
    assert dedup.size() == 2
    assert (dedup.clock_ms, dedup.event_ms) == (T0, T0 - 5)


def test_entries_expire_on_the_event_clock(case: Case[Dedup]) -> None:
    dedup = case.open()
    dedup.mark([h(1)], T0)
    dedup.mark([h(2)], T0 + TTL_MS)
    assert dedup.unseen([h(1)], T0 + TTL_MS - 1) == [False]
    assert dedup.unseen([h(1), h(2)], T0 + TTL_MS) == [True, False]  # expired at the mark + TTL
    assert dedup.unseen([h(2)], T0 + 2 * TTL_MS) == [True]
    assert dedup.purge(T0 + TTL_MS + TTL_MS // 2) == 1  # only the expired entry goes
    assert dedup.size() == 1 and dedup.unseen([h(2)], T0 + TTL_MS + TTL_MS // 2) == [False]
    assert dedup.purge(T0 + 4 * TTL_MS) == 1 and dedup.size() == 0


def test_marks_and_clocks_survive_a_restart(case: Case[Dedup]) -> None:
    dedup = case.open()
    assert (dedup.clock_ms, dedup.event_ms) == (None, None)
    dedup.mark([h(i) for i in range(100)], T0, event_ms=T0 + 7)
    dedup.close()
    again = case.open()
    assert (again.clock_ms, again.event_ms) == (T0, T0 + 7)
    assert again.unseen([h(i) for i in range(99, 102)], T0 + 1) == [False, True, True]
    assert again.size() == 100


def test_another_open_instance_sees_the_marks(case: Case[Dedup]) -> None:
    one, two = case.open(), case.open()
    assert two.unseen([h(1)], T0) == [True]
    one.mark([h(1)], T0)
    assert two.unseen([h(1), h(2)], T0) == [False, True]
    two.mark([h(2)], T0)
    assert one.unseen([h(1), h(2)], T0) == [False, False]


def test_close_releases_every_file_and_socket(case: Case[Any]) -> None:
    before = held(case.settings)
    dedup = case.open()
    dedup.mark([h(1)], T0)
    assert dedup.unseen([h(1)], T0) == [False]
    assert leaked(case.settings, before), "an open dedup holds a file or socket"
    dedup.close()
    dedup.close()  # a second close is harmless
    assert leaked(case.settings, before) == {}
