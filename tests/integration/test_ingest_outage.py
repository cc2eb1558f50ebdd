"""Live frames that arrive while Redis is down wait in the ingester's outage buffer (memory, then
disk) and reach the stream in arrival order once it is back; past the bounds they are counted."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from faults import PrivateRedis

from rtml.config import Settings, get_settings
from rtml.contracts import TxEvent
from rtml.monitoring.events import EventLog
from rtml.outage import read_health
from rtml.sources.ingest import Ingestor, ingest_counters
from rtml.sources.synthetic import to_utx_message
from rtml.stream import open_stream

BATCH = 10


@pytest.fixture
def redis_server(private_redis: Callable[..., PrivateRedis]) -> PrivateRedis:
    return private_redis()


@pytest.fixture
def outage_settings(
    data_dir: Path, redis_server: PrivateRedis, postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    """The services profile on the private Redis (the event log on the shared PostgreSQL), with a
    buffer of 3 batches in memory and about 4 on disk."""
    monkeypatch.setenv("RTML_PROFILE", "services")
    monkeypatch.setenv("RTML_REDIS_URL", redis_server.url)
    monkeypatch.setenv("RTML_POSTGRES_DSN", postgres_dsn)
    monkeypatch.setenv("RTML_INGEST__BUFFER_MEMORY_EVENTS", str(3 * BATCH))
    monkeypatch.setenv("RTML_INGEST__BUFFER_DISK_BYTES", "12000")
    settings = get_settings()
    yield settings
    from rtml.ops.purge import execute_purge, plan_purge

    execute_purge(settings, plan_purge(settings, services=True))


def frames(start: int, n: int) -> list[bytes]:
    now_s = int(time.time())
    return [
        json.dumps(to_utx_message(TxEvent(f"{i:064x}", (now_s - 600 + i % 500) * 1000, 1000 + i, 250, "ws", 0))).encode()
        for i in range(start, start + n)
    ]


def test_frames_during_a_redis_outage_are_buffered_then_appended_in_order(
    outage_settings: Settings, redis_server: PrivateRedis
) -> None:
    settings = outage_settings
    sent = [frames(i * BATCH, BATCH) for i in range(12)]
    ingestor = Ingestor(settings)
    assert ingestor.ingest_live(sent[0], "ws") is not None
    redis_server.stop()
    for batch in sent[1:9]:  # 3 batches fit in memory, then the disk part fills
        assert ingestor.ingest_live(batch, "ws") is None  # held: the live loop goes on
    health = read_health(settings, "ingest")
    assert health is not None and health["health"] == "degraded" and "redis" in health["services_down"]
    assert health["last_error"].startswith("redis: ConnectionError")
    held, dropped = len(ingestor.buffer), ingestor.buffer.dropped
    assert ingestor.buffer.memory_events == 3 * BATCH and ingestor.buffer.disk_events > 0
    assert dropped > 0 and held + dropped == 8 * BATCH and dropped % BATCH == 0
    assert health["buffered_events"] == held and health["buffer_dropped"] == dropped
    # A clean stop while Redis is still down: the memory part goes to disk, the next ingester has it.
    ingestor.close()
    redis_server.start()
    ingestor = Ingestor(settings)
    assert len(ingestor.buffer) == held and ingestor.buffer.memory_events == 0
    deadline = time.monotonic() + 30
    while len(ingestor.buffer):  # a quiet connection drains too (what the ws loop does every tick)
        assert time.monotonic() < deadline, "the buffer was never delivered"
        ingestor.ingest_live([], "ws")
        time.sleep(0.05)
    for batch in sent[9:]:
        assert ingestor.ingest_live(batch, "ws") is not None
    ingestor.close()

    kept = [f for batch in sent[: 1 + held // BATCH] for f in batch] + [f for batch in sent[9:] for f in batch]
    with open_stream(settings) as stream:
        got = [e.tx_hash for _, e in stream.read(None, 10_000)]
    assert got == [json.loads(f)["x"]["hash"] for f in kept]  # arrival order, nothing twice
    assert ingest_counters(settings)["buffer_dropped"] == dropped
    health = read_health(settings, "ingest")
    assert health is not None and health["health"] == "ok" and health["buffered_events"] == 0
    events = EventLog(settings)
    try:
        kinds = [(e.kind, e.details["service"], e.details["component"]) for e in events.recent(prefix="service.")]
        up = events.recent(prefix="service.up")
    finally:
        events.close()
    assert kinds == [("service.down", "redis", "ingest"), ("service.up", "redis", "ingest")]
    assert up[0].details["duration_s"] > 0
