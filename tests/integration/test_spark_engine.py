"""The Spark engine against the embedded one, on a real replay, both stream backends, and a kill -9.

The replay is the real blockchain.com recording `utx-2020-11-24.jsonl.gz`, re-timed dense
(a few dozen transactions a minute, with two empty minutes in the middle), delivered out of
order by up to 30 s (less than the 60 s lateness) and with 5 % of the events sent twice.
With that input nothing is late for either engine, so the window totals must be identical.

One SparkSession is shared by the in-process tests (a JVM start costs ~30 s on 2 busy cores);
the crash test runs the job as child processes, kills each one's whole process group (driver and
JVM) with SIGKILL at a random moment mid-stream, and finishes from the checkpoint in a new one.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require

from rtml.aggregate.embedded import Engine
from rtml.aggregate.sinks import MinutesTable, aggregate_db_path, read_minutes
from rtml.config import Settings, get_settings
from rtml.contracts import InvalidInput, MinuteFeatures, parse_message
from rtml.pipeline import minute_sinks
from rtml.stream import Row, open_stream

pytestmark = pytest.mark.spark

EVENTS = 2400
COMPARED = ("minute", "tx_count", "fee_total_sat", "fee_avg_sat", "event_time")


def dense_replay(path: Path, n: int = EVENTS, seed: int = 11) -> list[Row]:
    """The first `n` real transactions re-timed to ~40 a minute, in disordered delivery order."""
    events = []
    with gzip.open(path, "rt") as lines:
        for line in lines:
            try:
                events.append(parse_message(line, "replay", 0))
            except InvalidInput:
                continue
            if len(events) == n:
                break
    base = 1_700_000_000_000  # 2023-11-14 22:13:20 UTC: mid-minute, so windows are cut mid-stream
    rng = random.Random(seed)
    timed = []
    for i, e in enumerate(events):
        gap = 180_000 if i >= n // 2 else 0  # two whole minutes with no transaction
        timed.append((e.tx_hash, base + i * 1_500 + rng.randrange(1_500) + gap, e.fee_sat, e.size, e.source))
    sends = [(row[1] + rng.randrange(30_000), row) for row in timed]  # delivered up to 30 s late
    sends += [(row[1] + rng.randrange(30_000), row) for row in rng.sample(timed, n // 20)]  # 5 % twice
    sends.sort(key=lambda s: s[0])
    return [(*row, at) for at, row in sends]


def fill(settings: Settings, rows: list[Row]) -> None:
    with open_stream(settings) as stream:
        stream.append_rows(rows)


def embedded_reference(settings: Settings) -> list[MinuteFeatures]:
    engine = Engine(settings, sinks=minute_sinks(settings))
    try:
        engine.drain()
    finally:
        engine.close()
    return read_minutes(settings)


def table(path: Path) -> list[tuple[object, ...]]:
    import sqlite3

    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT * FROM minutes ORDER BY minute").fetchall()


def project(rows: list[MinuteFeatures]) -> list[tuple[object, ...]]:
    return [tuple(getattr(r, c) for c in COMPARED) for r in rows]


def spark_output(path: Path) -> list[MinuteFeatures]:
    from rtml.contracts import ms_to_datetime

    return [
        MinuteFeatures(ms_to_datetime(m), c, t, a, ms_to_datetime(e), r) for m, c, t, a, e, r in table(path)
    ]


@pytest.fixture(scope="module")
def spark(java: str) -> Iterator[object]:
    require(importlib.util.find_spec("pyspark") is not None, "pyspark is not installed (the spark extra)")
    from rtml.aggregate.spark_job import spark_session

    session = spark_session()
    yield session
    session.stop()


@pytest.fixture(scope="module")
def replay(shared_data: Path) -> list[Row]:
    return dense_replay(shared_data / "utx-2020-11-24.jsonl.gz")


def check_conformance(settings: Settings, spark: object, replay: list[Row], tmp_path: Path) -> None:
    from rtml.aggregate.spark_job import run_spark

    fill(settings, replay)
    reference = embedded_reference(settings)
    # The input really has what the test claims: duplicates, disorder, empty minutes.
    assert len({r[0] for r in replay}) == EVENTS < len(replay)
    assert any(a[1] > b[1] for a, b in zip(replay, replay[1:], strict=False))
    assert sum(r.tx_count for r in reference) == EVENTS
    assert [r.tx_count for r in reference].count(0) >= 2
    out = tmp_path / "spark-minutes.sqlite"
    result = run_spark(
        settings,
        drain=True,
        sinks=[MinutesTable(out)],
        spark=spark,
        max_rows_per_batch=1_000,  # type: ignore[arg-type]
    )
    assert result.batches >= 3  # several micro-batches: windows really cross batch boundaries
    assert project(spark_output(out)) == project(reference)
    assert spark_output(out) == reference  # revisions too


def test_conformance_sqlite_log(settings: Settings, spark: object, replay: list[Row], tmp_path: Path) -> None:
    check_conformance(settings, spark, replay, tmp_path)


@pytest.mark.services
def test_conformance_redis_streams(
    services_settings: Settings, spark: object, replay: list[Row], tmp_path: Path
) -> None:
    import redis

    client = redis.Redis.from_url(services_settings.redis_url)
    try:
        check_conformance(services_settings, spark, replay, tmp_path)
    finally:
        keys = list(client.scan_iter(f"{services_settings.namespace}:*"))
        if keys:
            client.delete(*keys)
        client.close()


def test_spark_gives_the_embedded_minutes_on_a_replay_with_hostile_frames(
    backend_settings: Settings, spark: object, replay: list[Row], tmp_path: Path
) -> None:
    """Frames beyond Bitcoin's bounds stop at ingestion; events far ahead of the stream reach it
    and both engines' clock guards (across Spark's micro-batch boundaries, and first in the
    stream) dead-letter them alike; the minutes are identical and equal the clean replay's."""
    import json

    from rtml.aggregate.spark_job import run_spark
    from rtml.sources.deadletters import open_ingest_store
    from rtml.sources.ingest import Ingestor

    settings = backend_settings
    clean = get_settings(data_dir=tmp_path / "clean", profile="embedded")
    fill(clean, replay)
    truth = embedded_reference(clean)
    far = [f"{k:064x}" for k in range(1, 8)]
    hostile_rows = list(replay)
    for k, at in enumerate((0, 3, 999, 1000, 1001, 1700, len(replay) - 2)):
        et = replay[-1][1] + (k + 2) * 3 * 3_600_000 + k * 86_400_000 * 91
        hostile_rows.insert(at + k, (far[k], et, 500, 200, "replay", 0))
    with Ingestor(settings) as ingestor:  # refused at the door: never in the stream
        counts = ingestor.ingest(
            ['{"op":"utx","x":{"hash":"' + "a" * 64 + '","time":1700000000,"size":5,"fee":' + str(2**63) + "}}",
             '{"op":"utx","x":' + "[" * 5000, "9" * 5000],
            "replay",
        )  # fmt: skip
    assert counts.dead_letters == 3
    fill(settings, hostile_rows)
    embedded = embedded_reference(settings)
    assert embedded == truth  # the far clocks moved nothing
    out = tmp_path / "spark-minutes.sqlite"
    result = run_spark(settings, drain=True, sinks=[MinutesTable(out)], spark=spark, max_rows_per_batch=1_000)  # type: ignore[arg-type]
    assert result.batches >= 3
    assert spark_output(out) == embedded
    with open_ingest_store(settings) as store:
        outliers = [json.loads(d.raw)["tx_hash"] for d in store.dead_letters(1000) if d.source == "aggregate"]
    assert sorted(outliers) == sorted(far * 2)  # each engine dead-lettered each far clock once


def test_replayed_batch_and_redelivery_are_harmless(settings: Settings, tmp_path: Path) -> None:
    """foreachBatch is at-least-once: the same batch id twice, or a crash before delivery, changes nothing."""
    from rtml.aggregate.spark_state import DriverState

    path = tmp_path / "state.json"
    out = tmp_path / "m.sqlite"
    state = DriverState(path, 60_000)
    base = 1_700_000_040_000  # a minute start
    assert state.apply(0, [(base, 3, 30, base + 59_000)])
    assert state.apply(1, [(base + 120_000, 2, 8, base + 185_000)])
    state.save()  # crash here: rows staged, not delivered
    again = DriverState(path, 60_000)
    assert not again.apply(1, [(base + 120_000, 99, 99, base + 185_000)])  # replayed batch: skipped
    assert again.deliver([MinutesTable(out)]) == 2  # re-delivered on restart
    assert [r[:4] for r in table(out)] == [(base, 3, 30, 10.0), (base + 60_000, 0, 0, None)]
    again.drain()
    again.deliver([MinutesTable(out)])
    assert [r[1:3] for r in table(out)][-1] == (2, 8)


def test_rows_of_one_batch_are_judged_against_the_watermark_at_batch_start(tmp_path: Path) -> None:
    """Spark emits a batch's windows in any order: a late row in the list must not hide an earlier window."""
    from rtml.aggregate.spark_state import DriverState

    state = DriverState(tmp_path / "state.json", 60_000)
    base = 1_700_000_040_000
    assert state.apply(0, [(base + 60_000, 1, 5, base + 61_000)])
    # The newest window first: it moves the watermark past `base`'s end, which Spark accepted.
    assert state.apply(1, [(base + 300_000, 1, 7, base + 301_000), (base, 2, 4, base + 1_000)])
    assert [row[:3] for row in state.outbox][:2] == [(base, 2, 4), (base + 60_000, 1, 5)]
    assert state.ignored_updates == 0


def test_kill_9_mid_stream_then_restart_from_checkpoint(settings: Settings, replay: list[Row], tmp_path: Path) -> None:
    """Twice: a driver (a new process each time, with its JVM) is killed at a random moment after
    it committed a micro-batch of its own; then a third new driver drains what is left."""
    from rtml.aggregate.spark_state import checkpoint_dir

    reference_settings = get_settings(data_dir=tmp_path / "reference")
    fill(reference_settings, replay)
    reference = embedded_reference(reference_settings)
    fill(settings, replay)
    minutes_db = aggregate_db_path(settings)
    MinutesTable(minutes_db).close()
    commits = Path(checkpoint_dir(settings)) / "commits"
    seed = random.randrange(2**32)
    rnd = random.Random(seed)
    job = [sys.executable, "-m", "rtml.aggregate.commands", "--max-rows-per-batch", "150", "--trigger-seconds", "0.5"]

    def committed() -> int:
        return sum(1 for p in commits.iterdir() if p.name.isdigit()) if commits.is_dir() else 0

    for kill in range(2):
        before = committed()
        # Live mode (no --drain) in a process group of its own: the driver and its JVM.
        child = subprocess.Popen(job, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 180
        try:
            while time.monotonic() < deadline and child.poll() is None and committed() <= before:
                time.sleep(0.05)
            assert child.poll() is None, child.stdout.read() if child.stdout else ""
            assert committed() > before, f"driver {kill + 1} committed nothing in 180 s"
            time.sleep(rnd.uniform(0.0, 0.6))  # a random moment of the work that follows
        finally:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
        assert 0 < len(table(minutes_db)) < len(reference), f"kill {kill + 1} (seed {seed}) was not mid-stream"
    done = subprocess.run([*job, "--drain"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert read_minutes(settings) == reference, f"seed {seed}"
