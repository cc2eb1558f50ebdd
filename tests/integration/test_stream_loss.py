"""The data-loss fault: a replay through `rtml up --profile services` on a private Redis WITHOUT
persistence, which is killed and comes back empty in the middle of it. The pipeline recovers by
itself (no person, no file deleted): the engine records a `stream.reset` event saying what was
lost, adopts the new stream, and the final minutes equal the truth except exactly that loss."""

from __future__ import annotations

import gzip
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from faults import free_port, wait_for

from rtml.config import get_settings
from rtml.contracts import MINUTE_MS
from rtml.ops.supervisor import read_state
from rtml.sources.synthetic import SyntheticConfig, SyntheticSource, to_utx_message

pytestmark = [pytest.mark.services, pytest.mark.slow]
MINUTES = 150  # about 21,000 transactions
SPEED = "120"  # 75 s of replay: the engine starts (opening Feast takes 20-60 s) within it
# The recovery bound this test holds the pipeline to: from the Redis restart until the engine
# has recorded the reset and caught up with the new stream. Most of it is the aggregator's own
# restart (it exits on the lost connection; opening Feast takes 10-60 s on a busy machine).
RECOVERY_BOUND_S = 120.0


def rtml(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rtml", *args], capture_output=True, text=True, timeout=timeout, env=os.environ.copy()
    )


def replay_file(tmp_path: Path) -> tuple[Path, dict[int, tuple[int, int]], int]:
    """Synthetic traffic as websocket frames; its per-minute (count, fee total) truth; its size."""
    events = list(SyntheticSource(SyntheticConfig(seed=11, start=datetime(2024, 10, 1, tzinfo=UTC), minutes=MINUTES)))
    path = tmp_path / "replay.jsonl.gz"
    with gzip.open(path, "wt") as out:
        for event in events:
            out.write(json.dumps(to_utx_message(event)) + "\n")
    counts: Counter[int] = Counter()
    fees: Counter[int] = Counter()
    for event in events:
        minute = (event.event_time // 1000 * 1000) // MINUTE_MS * MINUTE_MS  # wire times are seconds
        counts[minute] += 1
        fees[minute] += event.fee_sat
    return path, {m: (counts[m], fees[m]) for m in counts}, len(events)


def engine_state(data_dir: Path) -> tuple[int, str | None, str | None]:
    """(events consumed, stream name, offset) from the engine's own committed state."""
    path = data_dir / "aggregate.sqlite"
    if not path.exists():
        return 0, None, None
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as conn:
        try:
            row = conn.execute("SELECT events_in, stream, input_offset FROM engine_state WHERE id = 1").fetchone()
        except sqlite3.OperationalError:
            return 0, None, None
    return (int(row[0]), row[1], row[2]) if row else (0, None, None)


def engine_consumed(data_dir: Path) -> int:
    return engine_state(data_dir)[0]


def caught_up(data_dir: Path, redis: Any) -> bool:
    """The engine's committed offset is in the stream Redis holds now, and nothing lies past it."""
    _, name, offset = engine_state(data_dir)
    ns = get_settings().namespace
    with redis.client() as c:
        current = c.get(f"{ns}:stream:identity")
        if offset is None or current is None or name != current.decode():
            return False
        return not c.xrange(f"{ns}:stream:tx", min=f"({offset}", max="+", count=1)


def components() -> dict[str, dict[str, Any]]:
    state = read_state(get_settings())
    return state["components"] if state else {}  # type: ignore[no-any-return]


def resets() -> list[Any]:
    from rtml.monitoring.events import EventLog

    log = EventLog(get_settings())
    try:
        return log.recent(prefix="stream.reset")
    finally:
        log.close()


@pytest.mark.timeout(420)
def test_a_redis_that_lost_its_data_mid_replay_is_recovered_by_the_pipeline(
    data_dir: Path, tmp_path: Path, postgres_dsn: str, private_redis: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    redis = private_redis(appendonly=False)
    for key, value in {
        "RTML_PROFILE": "services", "RTML_REDIS_URL": redis.url, "RTML_POSTGRES_DSN": postgres_dsn,
        "RTML_STREAM__ALLOW_VOLATILE_REDIS": "true", "RTML_WINDOW__IDLE_TIMEOUT_S": "2",
    }.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    path, truth, total = replay_file(tmp_path)
    up = subprocess.Popen(
        [sys.executable, "-m", "rtml", "up", "--source", "replay", "--file", str(path), "--speed", SPEED,
         "--port", str(free_port()), "--timeout", "300"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy(),
    )  # fmt: skip
    try:
        # The fault: the engine is held (SIGSTOP) while the replay goes on, so the stream holds
        # events past its offset; then Redis is SIGKILLed and comes back with no data.
        wait_for(lambda: engine_consumed(data_dir) >= 1_000, 240, "the engine to follow the stream")
        engine = components()["aggregate"]["pid"]
        ns = get_settings().namespace
        os.kill(engine, signal.SIGSTOP)
        try:
            held = engine_consumed(data_dir)
            wait_for(lambda: redis.client().xlen(f"{ns}:stream:tx") >= held + 1_000, 60, "events past the offset")
            assert redis.client().xlen(f"{ns}:stream:tx") < total * 0.8, "the replay ended before the fault"
            redis.restart(kill=True, wipe=True)
        finally:
            os.kill(engine, signal.SIGCONT)
        restarted = time.monotonic()
        took = wait_for(lambda: bool(resets()), RECOVERY_BOUND_S, "a stream.reset event", every=0.2)
        wait_for(lambda: caught_up(data_dir, redis), RECOVERY_BOUND_S, "the engine to catch up with the new stream")
        recovered_s = time.monotonic() - restarted
        assert up.wait(300) == 0, up.stdout.read() if up.stdout else ""

        wait_for(lambda: components()["ingest"]["state"] == "finished", 240, "the replay to finish", every=0.5)
        from rtml.aggregate.sinks import read_minutes

        last = max(truth)
        wait_for(lambda: (rows := read_minutes(get_settings())) and rows[-1].minute.timestamp() * 1000 >= last,
                 120, "every minute to be closed", every=0.5)  # fmt: skip
        got = {int(r.minute.timestamp() * 1000): (r.tx_count, r.fee_total_sat) for r in read_minutes(get_settings())}
        (event,) = resets()
        reset = event.details
        print(f"\nrecovery: reset recorded {took:.1f} s and caught up {recovered_s:.1f} s after the Redis restart; "
              f"reset: {json.dumps(reset)}")  # fmt: skip

        # The loss is exactly the one reported: every minute outside the reported event times is
        # the truth; inside, none holds more, and together they miss exactly `lost` events.
        lo = datetime.fromisoformat(reset["event_time_from"]).timestamp() * 1000 if reset["event_time_from"] else None
        hi = datetime.fromisoformat(reset["event_time_to"]).timestamp() * 1000 if reset["event_time_to"] else None
        expected = {m: truth.get(m, (0, 0)) for m in range(min(truth), last + MINUTE_MS, MINUTE_MS)}
        assert set(got) == set(expected)
        wrong = {m for m in expected if got[m] != expected[m]}
        if wrong:
            assert lo is not None and hi is not None
            assert all(lo - MINUTE_MS < m <= hi for m in wrong), (wrong, reset)
        assert all(got[m][0] <= expected[m][0] for m in expected)  # nothing counted twice
        missing = sum(expected[m][0] - got[m][0] for m in expected)
        assert reset["events_after_offset"] is not None
        assert missing == reset["lost"], (missing, reset)
        print(f"events lost {missing} (past the offset {reset['events_after_offset']}, "
              f"recovered from the archive {reset['recovered_from_archive']})")  # fmt: skip

        # Nobody crash-looped: a few restarts at most while Redis was away, all up again.
        state = components()
        print("restarts:", {n: c["restarts"] for n, c in state.items()})
        assert all(c["restarts"] <= 4 for c in state.values()), {n: c["restarts"] for n, c in state.items()}
        assert {n: c["state"] for n, c in state.items()} == {**{n: "running" for n in state}, "ingest": "finished"}
        assert recovered_s < RECOVERY_BOUND_S
    finally:
        if up.poll() is None:
            up.kill()
        rtml("down", "--purge", "--yes")
