"""One suite for every stream backend: the SQLite log and a real Redis Stream."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator

import pytest

from rtml.config import Settings, get_settings
from rtml.contracts import TxEvent
from rtml.stream import Stream, open_stream, stream_path


def _event(i: int, ingest_time: int = 1_700_000_000_000) -> TxEvent:
    return TxEvent(f"{i:064x}", 1_606_000_000_000 + i * 250, i * 10, 200 + i % 50, "test", ingest_time + i)


@pytest.fixture
def stream(backend_settings: Settings) -> Iterator[Stream]:
    s = open_stream(backend_settings)
    yield s
    s.close()


def test_append_then_read_in_order_across_pages(stream: Stream) -> None:
    events = [_event(i) for i in range(2_500)]
    last = stream.append(events[:1_000])
    assert last is not None
    assert stream.append([]) is None
    stream.append(events[1_000:])
    got: list[TxEvent] = []
    offsets: list[str] = []
    after = None
    while page := stream.read(after, 700):
        offsets += [o for o, _ in page]
        got += [e for _, e in page]
        after = page[-1][0]
    assert got == events
    assert len(set(offsets)) == len(events)
    assert offsets[999] == last


def test_read_slim_matches_read(stream: Stream) -> None:
    stream.append([_event(i) for i in range(300)])
    full = stream.read(None, 1000)
    slim, last = stream.read_slim(None, 120)
    assert [(s[0], s[1], s[2]) for s in slim] == [(e.tx_hash, e.event_time, e.fee_sat) for _, e in full[:120]]
    assert last == full[119][0]
    rest, last2 = stream.read_slim(last, 1000)
    assert len(rest) == 180 and last2 == full[-1][0]
    assert stream.read_slim(last2, 10) == ([], last2)
    assert stream.count_after(None) == 300 and stream.count_after(last) == 180


def test_consumers_keep_independent_offsets(stream: Stream) -> None:
    stream.append([_event(i) for i in range(10)])
    page = stream.read(None, 10)
    assert stream.committed("aggregator") is None
    stream.commit("aggregator", page[3][0])
    stream.commit("archiver", page[7][0])
    assert stream.committed("aggregator") == page[3][0]
    assert [e for _, e in stream.read(stream.committed("archiver"), 10)] == [e for _, e in page[8:]]
    stream.commit("aggregator", page[9][0])
    assert stream.committed("aggregator") == page[9][0]
    assert stream.committed("archiver") == page[7][0]


def test_trim_by_length_and_age_keeps_offsets_valid(stream: Stream) -> None:
    import time

    now = int(time.time() * 1000)
    stream.append([_event(i, now) for i in range(100)])
    page = stream.read(None, 100)
    assert stream.trim(max_len=60) == 40
    assert [e for _, e in stream.read(None, 1000)] == [e for _, e in page[40:]]
    # Reading after a trimmed offset still works and yields what is left after it.
    assert [e for _, e in stream.read(page[10][0], 1000)] == [e for _, e in page[40:]]
    slim, last = stream.read_slim(page[10][0], 25)
    assert [s[0] for s in slim] == [e.tx_hash for _, e in page[40:65]] and last == page[64][0]
    assert stream.trim(max_age_s=3600) == 0
    assert stream.trim(max_age_s=-60) == 60
    assert stream.read(None, 10) == []


def test_concurrent_writers_and_reader_lose_nothing(backend_settings: Settings, stream: Stream) -> None:
    """Two appenders and a reader at once (each with its own handle, as separate processes would)."""

    def write(base: int) -> None:
        with open_stream(backend_settings) as own:
            for k in range(10):
                own.append([_event(base + k * 100 + i) for i in range(100)])

    threads = [threading.Thread(target=write, args=(b,)) for b in (0, 1_000_000)]
    for t in threads:
        t.start()
    seen: list[TxEvent] = []
    after = None
    while True:
        writing = any(t.is_alive() for t in threads)
        page = stream.read(after, 500)
        if page:
            seen += [e for _, e in page]
            after = page[-1][0]
        elif not writing:
            break
    for t in threads:
        t.join()
    assert sorted(e.tx_hash for e in seen) == sorted(
        _event(b + i).tx_hash for b in (0, 1_000_000) for i in range(1000)
    )
    # Each writer's batches stay in its own order.
    mine = [e.tx_hash for e in seen if int(e.tx_hash, 16) < 1_000_000]
    assert mine == [_event(i).tx_hash for i in range(1000)]


def test_wire_formats_other_readers_rely_on(backend_settings: Settings, stream: Stream) -> None:
    """The Spark data source reads these formats directly: keep them exactly."""
    event = _event(7)
    offset = stream.append([event])
    row = [event.tx_hash, event.event_time, event.fee_sat, event.size, event.source, event.ingest_time]
    if backend_settings.profile == "services":
        import redis

        r = redis.Redis.from_url(backend_settings.redis_url)
        entries = r.xrange(f"{backend_settings.namespace}:stream:tx")
        assert entries[0][0].decode() == offset
        assert entries[0][1] == {b"j": json.dumps(row, separators=(",", ":")).encode()}
        stream.commit("c", offset)
        assert r.hget(f"{backend_settings.namespace}:offsets", "c") == offset.encode()
    else:
        conn = sqlite3.connect(stream_path(backend_settings))
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        got = conn.execute(
            "SELECT offset, tx_hash, event_time, fee_sat, size, source, ingest_time FROM events"
        ).fetchall()
        assert got == [(int(offset), *row)]
        conn.close()


def test_a_redis_stream_lost_under_its_readers_is_named_anew_once(
    data_dir: object, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Redis that restarted empty (its keys gone): the first reader to look raises StreamReset
    once and follows the new stream; the old offsets are dropped, and a commit made against the
    old stream never lands in the new one's offsets."""
    import redis

    from rtml.stream import StreamReset

    monkeypatch.setenv("RTML_REDIS_URL", redis_url)
    monkeypatch.setenv("RTML_PROFILE", "services")
    settings = get_settings()
    r = redis.Redis.from_url(redis_url)
    writer, reader, stale = open_stream(settings), open_stream(settings), open_stream(settings)
    try:
        writer.append([_event(i) for i in range(10)])
        mark = writer.last_append
        assert mark is not None and mark.identity == reader.identity and mark.entries_added == 10
        page = reader.read(None, 100)
        reader.commit("aggregator", page[-1][0])
        old = reader.identity
        r.delete(*r.scan_iter(f"{settings.namespace}:stream:*"))  # the loss (the offsets hash survives it)
        assert r.hget(f"{settings.namespace}:offsets", "aggregator") is not None
        writer.append([_event(i) for i in range(10, 13)])  # names the new stream
        assert writer.last_append is not None and writer.last_append.identity != old
        assert writer.last_append.entries_added == 3
        with pytest.raises(StreamReset) as lost:
            reader.read(page[-1][0], 100)
        assert (lost.value.old, lost.value.new) == (old, writer.last_append.identity)
        assert [e.tx_hash for _, e in reader.read(None, 100)] == [_event(i).tx_hash for i in range(10, 13)]
        assert reader.committed("aggregator") is None  # the old offsets went with the old stream
        stale.commit("archiver", page[-1][0])  # still believes in the old stream
        assert reader.committed("archiver") is None
    finally:
        for s in (writer, reader, stale):
            s.close()
        r.delete(*r.scan_iter(f"{settings.namespace}:*"))
