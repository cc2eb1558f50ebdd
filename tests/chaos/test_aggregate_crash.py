"""kill -9 the aggregator again and again during a replay: no minute lost, none counted twice."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime

import pytest

from rtml.aggregate.embedded import aggregate_counters
from rtml.aggregate.reference import disorder, reference_minutes
from rtml.aggregate.sinks import aggregate_db_path, read_minutes
from rtml.config import Settings
from rtml.sources.synthetic import SyntheticConfig, SyntheticSource
from rtml.stream import Row, open_stream

KILLS = 12
# The engine with its own output table (the feature store's sink has its own kill test), small
# batches so that kills land between and inside many commits.
LIVE_ENGINE = (
    "from rtml.aggregate.embedded import run\n"
    "from rtml.aggregate.sinks import MinutesTable, aggregate_db_path\n"
    "from rtml.config import get_settings\n"
    "s = get_settings()\n"
    "run(s, drain=False, batch=500, sinks=[MinutesTable(aggregate_db_path(s))])\n"
)
DRAIN = LIVE_ENGINE.replace("drain=False", "drain=True")


def _replay() -> tuple[list[Row], list[Row], int]:
    source = SyntheticSource(
        SyntheticConfig(seed=11, start=datetime(2024, 3, 1, tzinfo=UTC), minutes=900, rate_per_min=600)
    )
    rows: list[Row] = [(e.tx_hash, e.event_time, e.fee_sat, e.size, e.source, e.ingest_time) for e in source]
    delivered, duplicates = disorder(rows, max_delay_ms=40_000, duplicate_share=0.01, seed=3)
    return rows, delivered, duplicates


def _events_in(settings: Settings) -> float:
    """The engine's committed input count, read cheaply enough to poll every few ms."""
    path = aggregate_db_path(settings)
    if not path.exists():
        return 0.0
    conn = sqlite3.connect(path, timeout=30)
    try:
        row = conn.execute("SELECT events_in FROM engine_state").fetchone()
    except sqlite3.OperationalError:  # the engine has not created its tables yet
        row = None
    finally:
        conn.close()
    return float(row[0]) if row else 0.0


@pytest.mark.slow
def test_sigkill_during_replay_loses_nothing_and_counts_nothing_twice(backend_settings: Settings) -> None:
    settings = backend_settings
    rows, delivered, duplicates = _replay()
    assert len(rows) >= 500_000
    expected = reference_minutes(rows)

    def write() -> None:
        with open_stream(settings) as stream:
            for i in range(0, len(delivered), 10_000):
                stream.append_rows(delivered[i : i + 10_000])
                time.sleep(0.02)  # the replay outpaces the engine: each kill finds it busy

    writer = threading.Thread(target=write)
    writer.start()
    env = {**os.environ, "RTML_WINDOW__IDLE_TIMEOUT_S": "3600"}
    rnd = random.Random(5)
    consumed = [0.0]
    proc: subprocess.Popen[bytes] | None = None
    # Kills spread over the first 90 % of the replay: the last one still finds work in flight.
    segment = 0.9 * len(delivered) / KILLS
    try:
        for kill in range(KILLS):
            proc = subprocess.Popen(
                [sys.executable, "-c", LIVE_ENGINE],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            # Kill at a random point of the work (a random point of this kill's twelfth of the
            # replay's first 90 %, then a random few ms into whatever step follows), whatever
            # the machine's speed: the kills land across the whole replay.
            target = max(kill * segment + rnd.uniform(0, 0.9 * segment), consumed[-1] + rnd.randint(500, 2_000))
            deadline = time.monotonic() + 60
            while _events_in(settings) < target:
                assert time.monotonic() < deadline, f"the restarted aggregator made no progress: {consumed}"
                time.sleep(0.002)
            time.sleep(rnd.uniform(0.0, 0.01))
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(timeout=30) == -signal.SIGKILL
            consumed.append(_events_in(settings))
    finally:
        if proc is not None and proc.poll() is None:  # a failed wait must not leave an engine behind
            proc.kill()
            proc.wait()
        writer.join()
    assert consumed[-1] < len(delivered), consumed  # every kill landed mid-replay
    thirds = {int(3 * c / len(delivered)) for c in consumed[1:]}
    assert thirds == {0, 1, 2}, consumed  # ... and in every third of it
    done = subprocess.run(
        [sys.executable, "-c", DRAIN],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert read_minutes(settings) == expected
    counters = aggregate_counters(settings)
    assert counters["events_in"] == len(delivered)
    assert counters["duplicates"] == duplicates
    assert counters["late"] == 0
