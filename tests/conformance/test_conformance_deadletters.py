"""The dead-letter store's conformance suite (rtml.sources.deadletters.IngestStore): every backend
class in BACKENDS passes it.

A letter is kept with its reason, source, bounded raw text, full length and hash, stamped with the
ingest clock; the store keeps at most `max_rows` (counting what it drops), retention trims by the
stamp, letters and counters survive a restart, and `close()` releases every file and socket.
"""

from __future__ import annotations

import hashlib
from typing import Any

from conformance_kit import Backend, Case, backend_cases, held, implementations, leaked

from rtml.contracts import DeadLetter, dead_letter
from rtml.sources.deadletters import (
    COUNTERS,
    DROPPED,
    IngestStore,
    RedisIngestStore,
    SqliteIngestStore,
    open_ingest_store,
)

MAX_ROWS = 5

BACKENDS: dict[type[IngestStore], Backend[IngestStore]] = {
    SqliteIngestStore: Backend("embedded", lambda s: SqliteIngestStore(str(s.path("ingest.sqlite")), MAX_ROWS)),
    RedisIngestStore: Backend("services", lambda s: RedisIngestStore(s.redis_url, s.namespace, MAX_ROWS)),
}
case = backend_cases(BACKENDS)


def letter(i: int, source: str = "ws") -> DeadLetter:
    return dead_letter(f'{{"frame": {i}}}', f"reason {i}", source, 1_700_000_000_000 + i)


def test_every_backend_class_is_in_the_suite() -> None:
    assert implementations(IngestStore, "rtml.sources") == set(BACKENDS)


def test_the_factory_picks_the_class_for_its_profile(case: Case[IngestStore]) -> None:
    with open_ingest_store(case.settings) as store:
        assert type(store) is case.cls


def test_a_letter_is_read_back_as_recorded_with_its_reason_and_stamp(case: Case[IngestStore]) -> None:
    store = case.open()
    assert store.dead_letters() == [] and store.dead_letter_count() == 0
    assert store.counters() == dict.fromkeys(COUNTERS, 0.0)
    first, second = letter(1), letter(2, source="rest")
    store.record([first, second], {"received": 3, "valid": 1, "dead_letters": 2}, clock_ms=5000)
    store.record([letter(3)], {"received": 1, "dead_letters": 1})  # no clock yet: stamped with its ingest time
    got = store.dead_letters()
    assert [(d.raw, d.reason, d.source, d.ingest_time) for d in got] == [
        ('{"frame": 1}', "reason 1", "ws", 1_700_000_000_001),
        ('{"frame": 2}', "reason 2", "rest", 1_700_000_000_002),
        ('{"frame": 3}', "reason 3", "ws", 1_700_000_000_003),
    ]
    assert [d.clock for d in got] == [5000, 5000, 1_700_000_000_003]
    assert store.dead_letters(limit=1) == got[-1:]  # the most recent, oldest first
    assert store.dead_letters(source="rest") == [got[1]]
    assert store.dead_letter_count() == 3
    counters = store.counters()
    assert (counters["received"], counters["valid"], counters["dead_letters"]) == (4.0, 1.0, 3.0)


def test_a_huge_frame_keeps_a_bounded_prefix_its_length_and_hash(case: Case[IngestStore]) -> None:
    store = case.open()
    raw = "x" * 100_000
    store.record([dead_letter(raw, "too big", "ws", 1, max_bytes=1024)], {"dead_letters": 1})
    (got,) = store.dead_letters()
    assert got.raw == raw[:1024] and got.raw_bytes == 100_000
    assert got.raw_sha256 == hashlib.sha256(raw.encode()).hexdigest()


def test_the_store_keeps_at_most_max_rows_and_counts_what_it_dropped(case: Case[IngestStore]) -> None:
    store = case.open()
    store.record([letter(i) for i in range(3)], {"dead_letters": 3}, clock_ms=1)
    store.record([letter(i) for i in range(3, 8)], {"dead_letters": 5}, clock_ms=2)
    assert store.dead_letter_count() == MAX_ROWS
    assert [d.raw for d in store.dead_letters()] == [f'{{"frame": {i}}}' for i in range(3, 8)]
    assert store.counters()[DROPPED] == 3 and store.counters()["dead_letters"] == 8


def test_retention_trims_by_the_clock_stamp(case: Case[IngestStore]) -> None:
    store = case.open()
    for clock in (1000, 2000, 3000):
        store.record([letter(clock)], {}, clock_ms=clock)
    assert store.trim_dead_letters(2000) == 1  # stamped before the cutoff
    assert [d.clock for d in store.dead_letters()] == [2000, 3000]
    size, rows, oldest = store.dead_letter_stats()
    assert size > 0 and rows == 2 and oldest == 2000
    assert store.trim_dead_letters(10_000) == 2
    assert store.dead_letter_count() == 0 and store.dead_letter_stats()[1:] == (0, None)


def test_letters_and_counters_survive_a_restart(case: Case[IngestStore]) -> None:
    store = case.open()
    store.record([letter(1), letter(2)], {"received": 2, "dead_letters": 2}, clock_ms=42)
    kept = store.dead_letters()
    store.close()
    again = case.open()
    assert again.dead_letters() == kept and again.counters()["received"] == 2.0


def test_close_releases_every_file_and_socket(case: Case[Any]) -> None:
    before = held(case.settings)
    store = case.open()
    store.record([letter(1)], {"received": 1})
    assert store.dead_letter_count() == 1
    assert leaked(case.settings, before), "an open store holds a file or socket"
    store.close()
    store.close()  # a second close is harmless
    assert leaked(case.settings, before) == {}
