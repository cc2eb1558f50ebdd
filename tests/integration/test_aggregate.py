"""The embedded engine on both stream backends: equals the pandas reference, restarts exactly."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from rtml.aggregate.embedded import Engine, aggregate_counters
from rtml.aggregate.reference import disorder, load_replay, reference_minutes, retime_dense
from rtml.aggregate.sinks import MinuteSink, MinutesTable, aggregate_db_path, read_minutes
from rtml.config import Settings, get_settings
from rtml.contracts import MINUTE_MS, MinuteFeatures
from rtml.stream import Row, open_stream, stream_path

REPLAY = "utx-2020-11-24.jsonl.gz"
# The engine with its own output table only: the feature store's sink has its own suite, and
# importing Feast would dominate these tests' time.
LIVE_ENGINE = (
    "from rtml.aggregate.embedded import run\n"
    "from rtml.aggregate.sinks import MinutesTable, aggregate_db_path\n"
    "from rtml.config import get_settings\n"
    "s = get_settings()\n"
    "run(s, drain=False, sinks=[MinutesTable(aggregate_db_path(s))])\n"
)


def _engine(settings: Settings, batch: int = 50_000) -> Engine:
    return Engine(settings, sinks=[MinutesTable(aggregate_db_path(settings))], batch=batch)


@pytest.fixture(scope="module")
def dense_replay(shared_data: Path) -> list[Row]:
    return retime_dense(load_replay(shared_data / REPLAY))


def _append(settings: Settings, rows: list[Row]) -> None:
    with open_stream(settings) as stream:
        for i in range(0, len(rows), 7_000):
            stream.append_rows(rows[i : i + 7_000])


def test_real_replay_with_disorder_and_duplicates_equals_the_reference(
    backend_settings: Settings, dense_replay: list[Row]
) -> None:
    delivered, duplicates = disorder(dense_replay, max_delay_ms=45_000, duplicate_share=0.03, seed=4)
    assert duplicates > 500
    assert [r[1] for r in delivered] != sorted(r[1] for r in delivered)
    _append(backend_settings, delivered)
    engine = _engine(backend_settings, batch=4_000)
    engine.drain()
    engine.close()
    expected = reference_minutes(dense_replay)
    assert sum(m.tx_count == 0 for m in expected) > 10  # the replay has empty minutes too
    assert read_minutes(backend_settings) == expected
    counters = aggregate_counters(backend_settings)
    assert counters["events_in"] == len(delivered)
    assert counters["duplicates"] == duplicates
    assert counters["late"] == 0 and counters["lag_events"] == 0
    with open_stream(backend_settings) as stream:  # the offset is mirrored for lag and trimming
        committed = stream.committed("aggregator")
        assert committed is not None and stream.count_after(committed) == 0
    assert counters["windows_emitted"] == len(expected)
    if backend_settings.profile == "services":  # mirrored where other machines can read them
        import redis

        mirrored = redis.Redis.from_url(backend_settings.redis_url).hgetall(
            f"{backend_settings.namespace}:counters:aggregate"
        )
        assert float(mirrored[b"events_in"]) == len(delivered)


def test_one_engine_per_data_directory(settings: Settings) -> None:
    engine = _engine(settings)
    with pytest.raises(RuntimeError, match="another aggregator is running"):
        _engine(settings)
    engine.close()
    _engine(settings).close()


def test_restart_at_every_batch_boundary_gives_the_same_output(
    backend_settings: Settings, dense_replay: list[Row]
) -> None:
    rows = dense_replay[:6_000]
    _append(backend_settings, rows)
    steps = 0
    while True:
        engine = _engine(backend_settings, batch=500)  # a fresh process each batch, in effect
        moved = engine.step().events
        engine.close()
        if not moved:
            break
        steps += 1
    assert steps == 12
    engine = _engine(backend_settings)
    engine.drain()
    engine.close()
    assert read_minutes(backend_settings) == reference_minutes(rows)


def test_late_events_are_recorded_with_their_reason(settings: Settings, dense_replay: list[Row]) -> None:
    rows = list(dense_replay[:3_000])
    straggler = (f"{1:064x}", rows[-1][1] - 70_000, 999, 100, "replay", 0)
    _append(settings, [*rows, straggler])
    engine = _engine(settings)
    engine.drain()
    engine.close()
    assert read_minutes(settings) == reference_minutes(rows)
    conn = sqlite3.connect(aggregate_db_path(settings))
    late = conn.execute("SELECT tx_hash, event_time, fee_sat, reason FROM late_events").fetchall()
    assert late == [(straggler[0], straggler[1], 999, "late: 10000 ms behind the watermark")]
    assert aggregate_counters(settings)["late"] == 1


def test_a_crash_between_commit_and_delivery_redelivers(settings: Settings, dense_replay: list[Row]) -> None:
    rows = dense_replay[:5_000]
    _append(settings, rows)

    class Failing(MinuteSink):
        def upsert(self, rows: object) -> None:
            raise RuntimeError("sink down")

    engine = Engine(settings, sinks=[Failing()])
    with pytest.raises(RuntimeError):
        engine.drain()
    engine.close()
    assert read_minutes(settings) == []  # committed to the outbox, never delivered
    engine = _engine(settings)  # delivers the outbox on start
    engine.drain()
    engine.close()
    assert read_minutes(settings) == reference_minutes(rows)


def test_drain_then_more_events_revises_the_drained_minute(
    settings: Settings, dense_replay: list[Row]
) -> None:
    rows = dense_replay[:4_000]
    cut = next(i for i in range(2_000, 4_000) if rows[i][1] % MINUTE_MS > 20_000)
    _append(settings, rows[:cut])
    for part in (rows[cut:],):
        engine = _engine(settings)
        engine.drain()
        engine.close()
        drained = read_minutes(settings)
        assert drained[-1].revision == 1
        _append(settings, part)
    engine = _engine(settings)
    engine.drain()
    engine.close()
    final = read_minutes(settings)
    expected = reference_minutes(rows)
    assert [(m.minute, m.tx_count, m.fee_total_sat) for m in final] == [
        (m.minute, m.tx_count, m.fee_total_sat) for m in expected
    ]
    revised = [m for m in final if m.revision == 2]
    assert [m.minute for m in revised] == [drained[-1].minute]


def _rtml(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rtml", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        **kw,  # type: ignore[call-overload]
    )


def test_cli_drain_and_features_show_formats(settings: Settings, dense_replay: list[Row]) -> None:
    rows = dense_replay[:3_000]
    _append(settings, rows)
    engine = _engine(settings)
    engine.drain()
    engine.close()
    # The command continues from the same state: nothing new to do (and so no Feast import).
    out = _rtml("aggregate", "--drain")
    assert "0 events, 0 minute rows emitted; totals: 3,000 events in, 0 late" in out.stderr
    expected = reference_minutes(rows)
    got = list(csv.DictReader(io.StringIO(_rtml("features", "show", "--format", "csv").stdout)))
    assert list(got[0]) == list(MinuteFeatures.COLUMNS)
    assert len(got) == len(expected)
    first = expected[0]
    assert got[0] == {
        "minute": first.minute.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "tx_count": str(first.tx_count),
        "fee_total_sat": str(first.fee_total_sat),
        "fee_avg_sat": repr(first.fee_avg_sat) if first.fee_avg_sat is not None else "",
        "event_time": first.event_time.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "revision": "1",
    }
    last3 = json.loads(_rtml("features", "show", "--last", "3", "--format", "json").stdout)
    assert [r["tx_count"] for r in last3] == [m.tx_count for m in expected[-3:]]
    start, end = expected[2].minute, expected[5].minute
    window = json.loads(
        _rtml(
            "features",
            "show",
            "--start",
            start.isoformat(),
            "--end",
            end.strftime("%Y-%m-%dT%H:%M"),
            "--format",
            "json",
        ).stdout
    )
    assert [r["minute"] for r in window] == [m.minute.strftime("%Y-%m-%dT%H:%M:%SZ") for m in expected[2:5]]
    table = _rtml("features", "show", "--last", "2").stdout
    assert "fee_total_sat" in table and str(expected[-1].tx_count) in table


def test_live_mode_follows_the_stream_and_commits_on_sigterm(
    settings: Settings, dense_replay: list[Row]
) -> None:
    rows = dense_replay[:4_000]
    env = {**os.environ, "RTML_WINDOW__IDLE_TIMEOUT_S": "600"}
    proc = subprocess.Popen([sys.executable, "-c", LIVE_ENGINE], env=env, stderr=subprocess.PIPE, text=True)
    try:
        _append(settings, rows[:2_000])
        expected = reference_minutes(rows)
        deadline = time.monotonic() + 60
        # Live: the minutes the watermark has passed appear without a drain.
        while time.monotonic() < deadline and aggregate_counters(settings)["events_in"] < 2_000:
            time.sleep(0.05)
        _append(settings, rows[2_000:])
        while time.monotonic() < deadline and aggregate_counters(settings)["events_in"] < 4_000:
            time.sleep(0.05)
        got = read_minutes(settings)
        assert got and got == expected[: len(got)]
        assert len(got) < len(expected)  # the last minutes wait for the watermark
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
    assert aggregate_counters(settings)["lag_events"] == 0
    engine = _engine(settings)
    engine.drain()
    engine.close()
    assert read_minutes(settings) == expected


def test_live_idle_stream_still_closes_its_windows(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No event will ever pass the last window's end: the wall clock must close it."""
    monkeypatch.setenv("RTML_WINDOW__ALLOWED_LATENESS_S", "1")
    monkeypatch.setenv("RTML_WINDOW__IDLE_TIMEOUT_S", "0.3")
    settings = get_settings()
    t0 = 1_700_000_000_000 - 1_700_000_000_000 % MINUTE_MS
    rows: list[Row] = [
        (f"{i:064x}", t, 100 * i, 200, "test", 0)
        for i, t in enumerate((t0 + 1_000, t0 + 30_000, t0 + MINUTE_MS + 59_000), start=1)
    ]
    _append(settings, rows)
    engine = _engine(settings)
    stop = threading.Event()
    worker = threading.Thread(target=engine.run_live, args=(stop,))
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while len(read_minutes(settings)) < 2:
            assert time.monotonic() < deadline, read_minutes(settings)
            time.sleep(0.05)
    finally:
        stop.set()
        worker.join()
        engine.close()
    assert read_minutes(settings) == reference_minutes(rows)


def test_live_mode_rides_out_a_failing_sink(settings: Settings, dense_replay: list[Row]) -> None:
    """A sink that is down loses nothing: rows wait in the outbox and are re-offered."""
    rows = dense_replay[:3_000]
    _append(settings, rows)

    class Flaky(MinuteSink):
        def __init__(self) -> None:
            self.failures = 3
            self.rows: dict[object, object] = {}

        def upsert(self, got: Sequence[MinuteFeatures]) -> None:
            if self.failures:
                self.failures -= 1
                raise ConnectionError("store unavailable")
            self.rows.update((r.minute, r) for r in got)

    flaky = Flaky()
    engine = Engine(settings, sinks=[MinutesTable(aggregate_db_path(settings)), flaky])
    stop = threading.Event()
    worker = threading.Thread(target=engine.run_live, args=(stop,))
    worker.start()
    try:
        expected = reference_minutes(rows)
        deadline = time.monotonic() + 60
        while flaky.failures or aggregate_counters(settings)["events_in"] < len(rows):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        engine_rows = read_minutes(settings)
        while len(flaky.rows) < len(engine_rows):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        stop.set()
        worker.join()
        engine.close()
    assert engine_rows and engine_rows == expected[: len(engine_rows)]
    assert [flaky.rows[m.minute] for m in engine_rows] == engine_rows


def test_a_lost_stream_is_recovered_from_the_archive_and_adopted_from_its_start(
    backend_settings: Settings, dense_replay: list[Row]
) -> None:
    """The stream is lost with 2,000 events the engine had not read, which only the archive
    holds; a new stream follows. The engine notices (while running on Redis, at its next start
    on SQLite), records the reset, re-derives those minutes from the archive and reads the new
    stream from its start: the minutes equal the reference of everything, none was skipped."""
    from rtml.archive.parquet_lake import archive_pending

    rows = dense_replay[:4_000]
    _append(backend_settings, rows[:3_000])
    resets: list[dict] = []
    engine = Engine(backend_settings, sinks=[MinutesTable(aggregate_db_path(backend_settings))],
                    batch=1_000, on_reset=resets.append)  # fmt: skip
    assert engine.step().events == 1_000
    offset = engine.offset
    assert archive_pending(backend_settings) == 3_000  # the archiver is ahead of the engine
    services = backend_settings.profile == "services"
    if services:  # a Redis that restarted empty, under the running engine
        import redis

        r = redis.Redis.from_url(backend_settings.redis_url)
        r.delete(*r.scan_iter(f"{backend_settings.namespace}:*"))
    else:
        engine.close()
        Path(stream_path(backend_settings)).unlink()
    _append(backend_settings, rows[3_000:])
    if not services:
        engine = Engine(backend_settings, sinks=[MinutesTable(aggregate_db_path(backend_settings))],
                        on_reset=resets.append)  # fmt: skip
    engine.drain()
    engine.close()
    assert read_minutes(backend_settings) == reference_minutes(rows)
    assert len(resets) == 1
    reset = resets[0]
    assert reset["committed_offset"] == offset and reset["events_consumed"] == 1_000
    assert reset["recovered_from_archive"] == 2_000 and reset["rederived_minutes"] > 0
    assert aggregate_counters(backend_settings)["lag_events"] == 0
