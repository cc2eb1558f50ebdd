"""The stream's conformance suite (rtml.stream.base.Stream): every backend class in BACKENDS passes it.

Append and read from an offset in order, per-consumer committed offsets that survive a restart,
lag (`count_after`), retention that never drops what a consumer has not committed, stats, and a
`close()` that releases every file and socket. Offsets are opaque: only the backend compares them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from conformance_kit import Backend, Case, backend_cases, held, implementations, leaked

from rtml.contracts import TxEvent
from rtml.stream import Stream, open_stream, stream_path
from rtml.stream.redis_streams import RedisStream
from rtml.stream.sqlite_log import SqliteStream

BACKENDS: dict[type[Stream], Backend[Stream]] = {
    SqliteStream: Backend("embedded", lambda s: SqliteStream(Path(stream_path(s)))),
    RedisStream: Backend("services", lambda s: RedisStream(s.redis_url, s.namespace)),
}
case = backend_cases(BACKENDS)

T0 = 1_700_000_000_000


def events(n: int, first: int = 0) -> list[TxEvent]:
    """n events, a second apart in event time, ingested now (so no age-based trim takes them)."""
    now = int(time.time() * 1000)
    return [TxEvent(f"{i:064x}", T0 + 1000 * i, 100 + i, 200 + i, "conformance", now) for i in range(first, first + n)]


def test_every_backend_class_is_in_the_suite() -> None:
    assert implementations(Stream, "rtml.stream") == set(BACKENDS)


def test_the_factory_picks_the_class_for_its_profile(case: Case[Stream]) -> None:
    with open_stream(case.settings) as stream:
        assert type(stream) is case.cls


def test_reads_return_what_was_appended_in_order_from_any_offset(case: Case[Stream]) -> None:
    stream, sent = case.open(), events(50)
    assert stream.read(None, 10) == [] and stream.append([]) is None
    first_last = stream.append(sent[:30])
    last = stream.append(sent[30:])
    got = stream.read(None, 100)
    assert [e for _, e in got] == sent
    offsets = [o for o, _ in got]
    assert len(set(offsets)) == 50 and offsets[29] == first_last and offsets[-1] == last
    assert stream.read(offsets[9], 5) == got[10:15]  # strictly after the offset, at most `limit`
    assert stream.read(last, 10) == []
    rows, upto = stream.read_slim(offsets[4], 10)
    assert rows == [(e.tx_hash, e.event_time, e.fee_sat) for e in sent[5:15]] and upto == offsets[14]
    assert stream.read_slim(last, 10) == ([], last)
    assert stream.count_after(None) == 50 and stream.count_after(offsets[9]) == 40 and stream.count_after(last) == 0


def test_offsets_and_events_survive_a_restart(case: Case[Stream]) -> None:
    stream, sent = case.open(), events(20)
    stream.append(sent)
    offsets = [o for o, _ in stream.read(None, 100)]
    assert stream.committed("engine") is None
    stream.commit("engine", offsets[4])
    stream.commit("engine", offsets[9])  # a later commit replaces the earlier one
    stream.commit("archive", offsets[2])
    identity = stream.identity
    stream.close()
    again = case.open()
    assert again.identity == identity
    assert again.committed("engine") == offsets[9] and again.committed("archive") == offsets[2]
    assert again.committed("nobody") is None
    assert [e for _, e in again.read(again.committed("engine"), 100)] == sent[10:]
    appended = again.append(events(1, first=20))
    assert [o for o, _ in again.read(offsets[-1], 10)] == [appended]


def test_retention_drops_only_what_every_consumer_committed(case: Case[Stream]) -> None:
    stream, sent = case.open(), events(30)
    stream.append(sent)
    offsets = [o for o, _ in stream.read(None, 100)]
    stream.commit("a", offsets[19])
    stream.commit("b", offsets[9])
    late = T0 + 10**9  # every event is older than this: only the commits hold them
    assert stream.trim_consumed(late, ["a", "never-committed"]) == 0
    assert stream.trim_consumed(late, ["a", "b"]) == 10  # up to b's commit, inclusive
    assert [e for _, e in stream.read(None, 100)] == sent[10:]
    stream.commit("b", offsets[19])
    assert stream.trim_consumed(sent[12].event_time, ["a", "b"]) == 2  # younger events stay
    assert stream.read(None, 1)[0][1] == sent[12]
    assert stream.count_after(None) == 18
    assert stream.trim(max_age_s=3600) == 0  # ingested now: younger than an hour
    assert stream.trim(max_len=5) == 13
    assert [e for _, e in stream.read(None, 100)] == sent[25:]


def test_stats_count_the_events_and_date_the_oldest(case: Case[Stream]) -> None:
    stream = case.open()
    assert stream.stats()[1:] == (0, None)
    stream.append(events(7, first=3))
    size, rows, oldest = stream.stats()
    assert size > 0 and rows == 7 and oldest == T0 + 3000


def test_close_releases_every_file_and_socket(case: Case[Any]) -> None:
    before = held(case.settings)
    stream = case.open()
    stream.append(events(3))
    stream.commit("engine", stream.read(None, 10)[-1][0])
    assert leaked(case.settings, before), "an open stream holds a file or socket"
    stream.close()
    stream.close()  # a second close is harmless
    assert leaked(case.settings, before) == {}
