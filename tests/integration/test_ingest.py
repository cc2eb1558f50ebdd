"""Ingestion's stores on every backend (SQLite and a real Redis), the replay and synthetic sources, the archive, the CLI."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rtml.archive.parquet_lake import archive_files, archive_pending, read_events
from rtml.config import Settings
from rtml.contracts import TxEvent
from rtml.sources.commands import run_ingest
from rtml.sources.deadletters import open_ingest_store
from rtml.sources.ingest import Ingestor, ingest_counters
from rtml.sources.replay import paced_batches
from rtml.sources.synthetic import to_utx_message
from rtml.stream import open_stream
from rtml.stream.dedup import Dedup, SqliteDedup, open_dedup


def h(i: int) -> str:
    return f"{i:064x}"


def event(i: int) -> TxEvent:
    # Spread over three hours of 2020-11-24 so the archive gets several partitions.
    return TxEvent(h(i), 1_606_176_000_000 + i * 37_000, 100 + i, 200 + i % 7, "test", 0)


T = 1_606_176_000_000  # an ingest clock reading (2020-11-24)


def first_seen(dedup: Dedup, hashes: list[str], clock: int = T) -> list[bool]:
    """Check, then mark what was new at `clock`: what the ingestor does around its stream append."""
    flags = dedup.unseen(hashes, clock)
    dedup.mark([x for x, f in zip(hashes, flags, strict=True) if f], clock)
    return flags


def test_dedup_marks_batches_once_and_survives_restart(backend_settings: Settings) -> None:
    with open_dedup(backend_settings) as dedup:
        assert dedup.clock_ms is None
        assert first_seen(dedup, [h(1), h(2), h(1), h(3)]) == [True, True, False, True]
        assert first_seen(dedup, [h(2), h(4)]) == [False, True]
        assert first_seen(dedup, []) == []
        assert dedup.unseen([h(5), h(5)], T) == [True, False]
        assert dedup.unseen([h(5)], T) == [True]  # checking marks nothing
    with open_dedup(backend_settings) as dedup:
        assert dedup.clock_ms == T  # where the next ingester resumes
        assert dedup.unseen([h(1), h(2), h(3), h(4), h(5)], T) == [False, False, False, False, True]


def test_dedup_entries_expire_on_event_time(backend_settings: Settings) -> None:
    """An entry expires once the ingest clock passes the clock at its marking + TTL, whatever the
    wall clock does, and whatever the event's own time (old mempool transactions, lying ones)."""
    ttl = 3_600_000
    backend_settings.ingest = backend_settings.ingest.model_copy(update={"dedup_ttl_s": ttl // 1000})
    with open_dedup(backend_settings) as dedup:
        assert first_seen(dedup, [h(7), h(8), h(9)]) == [True] * 3
        assert dedup.unseen([h(7), h(8), h(9)], T + ttl - 1) == [False] * 3
        assert dedup.unseen([h(7), h(8)], T + ttl) == [True, True]
        assert first_seen(dedup, [h(7)], T + ttl) == [True]  # marked again: a fresh TTL
        later = T + ttl + ttl // 12  # purges may lag by a twelfth of the TTL (Redis buckets)
        assert dedup.purge(later) == 2  # h8 and h9; h7 is marked again
        assert dedup.unseen([h(7), h(9)], later) == [False, True]
    with open_dedup(backend_settings) as dedup:
        assert dedup.unseen([h(7), h(9)], later) == [False, True]
        assert dedup.size() == 1


def test_embedded_dedup_agrees_across_processes_and_purges(settings: Settings) -> None:
    path = str(settings.path("dedup.sqlite"))
    a, b = SqliteDedup(path, 100), SqliteDedup(path, 100)
    try:
        assert first_seen(a, [h(1), h(2)], 1_000) == [True, True]
        assert first_seen(b, [h(2), h(3)], 1_000) == [False, True]
        assert first_seen(a, [h(3)], 1_000) == [False]
        assert a.purge(200_000) == 3
        assert first_seen(b, [h(1)], 200_000) == [True]
        # After a purge emptied the table, new rows still reach the other process.
        assert first_seen(a, [h(1), h(5)], 200_000) == [False, True]
    finally:
        a.close()
        b.close()


def test_a_crash_between_append_and_mark_loses_nothing_and_counts_once(backend_settings: Settings) -> None:
    """The batch is in the stream but unmarked; the re-sent batch is appended again, and the
    aggregation engine still counts every transaction once."""
    from rtml.aggregate.embedded import run
    from rtml.aggregate.sinks import MinutesTable, aggregate_db_path, read_minutes

    frames = [json.dumps(to_utx_message(event(i))) for i in range(20)]
    with Ingestor(backend_settings) as ingestor:
        ingestor.dedup.mark = lambda *_: (_ for _ in ()).throw(KeyboardInterrupt)  # type: ignore[method-assign]
        with pytest.raises(KeyboardInterrupt):
            ingestor.ingest(frames[:10], "ws")
    with Ingestor(backend_settings) as ingestor:
        again = ingestor.ingest(frames, "ws")
    assert (again.appended, again.duplicates) == (20, 0)
    run(backend_settings, drain=True, sinks=[MinutesTable(aggregate_db_path(backend_settings))])
    rows = read_minutes(backend_settings)
    assert sum(r.tx_count for r in rows) == 20
    assert sum(r.fee_total_sat for r in rows) == sum(event(i).fee_sat for i in range(20))


def test_pipeline_counts_dead_letters_and_appends_first_sightings(backend_settings: Settings) -> None:
    frames: list[Any] = [json.dumps(to_utx_message(event(i))) for i in range(5)]
    batch = [*frames, frames[0], "{broken", {"op": "utx", "x": {"hash": "zz"}}, event(9).to_dict()]
    with Ingestor(backend_settings) as ingestor:
        first = ingestor.ingest(batch, "ws")
        second = ingestor.ingest(frames[:2], "rest")
    assert first.as_dict() == {"received": 9, "valid": 7, "duplicates": 1, "dead_letters": 2, "appended": 6}
    assert second.duplicates == 2 and second.appended == 0
    assert ingest_counters(backend_settings) == {
        "received": 11.0, "valid": 9.0, "duplicates": 3.0, "dead_letters": 2.0, "appended": 6.0,
    }  # fmt: skip
    with open_ingest_store(backend_settings) as store:
        letters = store.dead_letters()
        assert store.dead_letter_count() == 2
        assert store.dead_letters(source="rest") == []
        assert store.dead_letters(limit=1) == letters[1:]
    assert letters[0].raw == "{broken" and letters[0].reason.startswith("not JSON")
    assert json.loads(letters[1].raw) == {"op": "utx", "x": {"hash": "zz"}}
    assert "hash is not 64 hex" in letters[1].reason and letters[1].source == "ws"
    with open_stream(backend_settings) as stream:
        stored = [e for _, e in stream.read(None, 100)]
    assert [e.tx_hash for e in stored] == [h(i) for i in (0, 1, 2, 3, 4, 9)]
    assert [e.fee_sat for e in stored] == [event(i).fee_sat for i in (0, 1, 2, 3, 4, 9)]


def write_replay_file(path: Path, n: int) -> list[TxEvent]:
    """utx frames and TxEvent rows mixed, some repeated, three garbage lines."""
    events = [event(i) for i in range(n)]
    with gzip.open(path, "wt") as out:
        for i, e in enumerate(events):
            out.write(json.dumps(to_utx_message(e) if i % 2 else e.to_dict()) + "\n")
            if i % 50 == 0:
                out.write(json.dumps(to_utx_message(e)) + "\n")
        out.write("\n{oops\n" + '{"op":"utx","x":{}}\n' + '"a string"\n')
    return events


def test_replay_at_max_speed_fills_stream_and_a_compacted_archive(settings: Settings, tmp_path: Path) -> None:
    events = write_replay_file(tmp_path / "utx.jsonl.gz", 600)
    totals = run_ingest(settings, "replay", file=tmp_path / "utx.jsonl.gz", speed=None)
    assert totals.appended == 600 and totals.duplicates == 12 and totals.dead_letters == 3
    with open_stream(settings) as stream:
        assert {e.tx_hash for _, e in stream.read(None, 10_000)} == {e.tx_hash for e in events}
        assert stream.committed("archiver") is not None

    frame = read_events(settings)
    assert list(frame.columns) == ["tx_hash", "event_time", "fee_sat", "size", "source", "ingest_time"]
    assert list(frame.tx_hash) == [e.tx_hash for e in events]
    assert list(frame.fee_sat) == [e.fee_sat for e in events]
    files = archive_files(settings)
    hours = {f.parent.relative_to(settings.root / "archive").as_posix() for f in files}
    assert hours == {"date=2020-11-24/hour=00", "date=2020-11-24/hour=01", "date=2020-11-24/hour=02",
                     "date=2020-11-24/hour=03", "date=2020-11-24/hour=04", "date=2020-11-24/hour=05",
                     "date=2020-11-24/hour=06"}  # fmt: skip
    assert len(files) == len(hours)  # one compacted file per hour

    window = read_events(settings, 1_606_179_600_000, 1_606_183_200_000)  # 01:00 .. 02:00
    assert (
        len(window)
        and window.event_time.min() >= 1_606_179_600_000
        and window.event_time.max() < 1_606_183_200_000
    )
    assert list(window.tx_hash) == [
        e.tx_hash for e in events if 1_606_179_600_000 <= e.event_time < 1_606_183_200_000
    ]
    import duckdb  # the lake is plain Hive-partitioned Parquet

    count = (
        duckdb.connect()
        .execute(
            f"SELECT count(*) FROM read_parquet('{settings.root}/archive/**/*.parquet', hive_partitioning=true) WHERE hour = 1"
        )
        .fetchone()
    )
    assert count == (len(window),)


def test_archiver_crash_before_commit_doubles_nothing(
    backend_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import duckdb

    settings = backend_settings
    with Ingestor(settings) as ingestor:
        ingestor.ingest([json.dumps(to_utx_message(event(i))) for i in range(300)], "replay")
    with open_stream(settings) as stream:
        monkeypatch.setattr(
            stream, "commit", lambda consumer, offset: (_ for _ in ()).throw(OSError("killed"))
        )
        with pytest.raises(OSError):
            archive_pending(settings, stream)
    assert archive_files(settings)  # files were written, the offset was not
    assert archive_pending(settings) == 300
    rows = (
        duckdb.connect()
        .execute(f"SELECT count(*) FROM read_parquet('{settings.root}/archive/**/*.parquet')")
        .fetchone()
    )
    assert rows == (300,)
    assert archive_pending(settings) == 0


def test_paced_replay_follows_event_time_at_the_speed_factor() -> None:
    lines = [json.dumps(to_utx_message(event(i))).encode() for i in range(0, 100, 10)]  # 370 s apart each
    clock = [0.0]
    waits: list[float] = []

    def wait(seconds: float) -> None:
        waits.append(seconds)
        clock[0] += seconds

    batches = list(paced_batches(lines, 60.0, clock=lambda: clock[0], wait=wait))
    assert [line for b in batches for line in b] == lines
    assert clock[0] == pytest.approx(9 * 370 / 60, abs=0.01)  # 9 gaps of 370 s at 60x
    assert max(waits) <= 1.0  # waits are short, so a stop request is noticed


def test_synthetic_source_for_a_duration(settings: Settings) -> None:
    totals = run_ingest(settings, "synthetic", speed=None, duration_s=60, archive=False)
    assert totals.appended > 100 and totals.dead_letters == 0 and totals.duplicates == 0


def test_cli_ingest_replay_and_dlq_show(data_dir: Path, tmp_path: Path) -> None:
    write_replay_file(tmp_path / "utx.jsonl.gz", 120)
    run = [sys.executable, "-m", "rtml"]
    out = subprocess.run(
        [*run, "ingest", "--source", "replay", "--file", str(tmp_path / "utx.jsonl.gz"), "--speed", "max"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "appended" in out.stdout and "120" in out.stdout
    out = subprocess.run([*run, "dlq", "show"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "3 in total" in out.stdout and "not JSON" in out.stdout
    bad = subprocess.run([*run, "ingest", "--source", "replay"], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "--file" in bad.stderr


def test_stores_from_before_the_event_clock_upgrade_in_place(backend_settings: Settings) -> None:
    """Old dead letters (no `clock`) read and age by their ingest time; an old dedup log (its
    expiries wall time) is dropped once, and the store works on from there."""
    import sqlite3

    import redis

    if backend_settings.profile == "embedded":
        db = sqlite3.connect(backend_settings.path("ingest.sqlite"))
        db.execute(
            "CREATE TABLE dead_letters (id INTEGER PRIMARY KEY, raw TEXT NOT NULL, reason TEXT NOT NULL,"
            " source TEXT NOT NULL, ingest_time INTEGER NOT NULL)"
        )
        db.execute("INSERT INTO dead_letters (raw, reason, source, ingest_time) VALUES ('old', 'bad', 'ws', ?)", (T,))
        db.commit()
        db.close()
        db = sqlite3.connect(backend_settings.path("dedup.sqlite"))
        db.execute("CREATE TABLE seen_batches (id INTEGER PRIMARY KEY AUTOINCREMENT, expires INTEGER NOT NULL, hashes TEXT NOT NULL)")
        db.execute("INSERT INTO seen_batches (expires, hashes) VALUES (?, ?)", (4_000_000_000_000, json.dumps([h(1)])))
        db.commit()
        db.close()
    else:
        r = redis.Redis.from_url(backend_settings.redis_url)
        r.xadd(f"{backend_settings.namespace}:deadletters", {"raw": "old", "reason": "bad", "source": "ws", "ingest_time": T})
        r.close()
    with open_ingest_store(backend_settings) as store:
        store.record([], {"received": 1}, T + 2)
        assert [(d.raw, d.clock) for d in store.dead_letters()] == [("old", T)]
        assert store.dead_letter_stats()[1:] == (1, T)
        assert store.trim_dead_letters(T + 1) == 1
    with open_dedup(backend_settings) as dedup:
        assert dedup.unseen([h(1)], T) == [True] and dedup.size() == 0
        assert first_seen(dedup, [h(1)]) == [True]
    with open_dedup(backend_settings) as dedup:
        assert dedup.unseen([h(1)], T) == [False]
