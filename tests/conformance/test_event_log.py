"""The event log's contract (`EventBackend`), for every backend."""

from __future__ import annotations

import time

import pytest
from conformance_kit import Backend, Case, backend_cases

from rtml.config import BACKENDS as PROFILE_BACKENDS
from rtml.config import Settings
from rtml.monitoring import events as events_module
from rtml.monitoring.events import EventBackend, EventLog, PostgresEventLog, SqliteEventLog, open_event_log

BACKENDS: dict[type[EventBackend], Backend[EventBackend]] = {
    SqliteEventLog: Backend("embedded", SqliteEventLog),
    PostgresEventLog: Backend("services", PostgresEventLog),
}
case = backend_cases(BACKENDS)


def test_every_backend_is_in_the_suite_and_the_factory_picks_by_profile() -> None:
    assert set(events_module._BACKENDS.items()) == {(PROFILE_BACKENDS[b.profile]["events"], c) for c, b in BACKENDS.items()}
    assert EventLog is open_event_log


@pytest.fixture
def opened(case: Case[EventBackend]) -> tuple[type[EventBackend], Settings, EventBackend]:
    """The store under test: `case` runs each test once per class of BACKENDS and closes it."""
    return case.cls, case.settings, case.open()


def test_the_factory_opens_this_backend(opened: tuple[type[EventBackend], Settings, EventBackend]) -> None:
    cls, settings, _ = opened
    log = open_event_log(settings)
    try:
        assert type(log) is cls
    finally:
        log.close()


def test_a_keyed_record_is_written_once(opened: tuple[type[EventBackend], Settings, EventBackend]) -> None:
    _, _, log = opened
    assert log.record("model.promoted", time_ms=10, key="promote:3", version="3") is True
    assert log.record("model.promoted", time_ms=11, key="promote:3", version="other") is False
    assert log.record("model.promoted", time_ms=12, version="4") is True  # unkeyed: always new
    assert log.record("model.promoted", time_ms=12, version="4") is True
    assert log.count("model.promoted") == 3
    found = log.find("promote:3")
    assert found is not None and (found.time_ms, found.kind, found.details) == (10, "model.promoted", {"version": "3"})
    assert log.find("promote:4") is None


def test_events_read_back_in_order_by_prefix_id_and_limit(
    opened: tuple[type[EventBackend], Settings, EventBackend],
) -> None:
    _, _, log = opened
    for i, kind in enumerate(["drift.alert", "model.trained", "drift.ok", "drift.alert.extra", "model.promoted"]):
        log.record(kind, time_ms=100 + i, i=i, when={"nested": [i]})
    every = log.recent()
    assert [e.kind for e in every] == ["drift.alert", "model.trained", "drift.ok", "drift.alert.extra", "model.promoted"]
    assert [e.time_ms for e in every] == [100, 101, 102, 103, 104]
    assert every[2].details == {"i": 2, "when": {"nested": [2]}}
    assert [e.id for e in every] == sorted(e.id for e in every)
    assert [e.kind for e in log.recent(prefix="drift.")] == ["drift.alert", "drift.ok", "drift.alert.extra"]
    assert [e.kind for e in log.recent(limit=2)] == ["drift.alert.extra", "model.promoted"]  # the newest
    assert [e.details["i"] for e in log.recent(after_id=every[2].id)] == [3, 4]
    assert log.count("drift.alert") == 1  # the exact kind, not a prefix
    assert log.count("nothing") == 0


def test_an_event_without_a_time_is_stamped_by_the_clock(
    opened: tuple[type[EventBackend], Settings, EventBackend],
) -> None:
    _, _, log = opened
    before = int(time.time() * 1000)
    log.record("scheduler.job_failed", key="k")
    after = int(time.time() * 1000)
    found = log.find("k")
    assert found is not None and before <= found.time_ms <= after  # no closed minute yet: wall time


def test_retention_trims_what_is_older_and_stats_follow(
    opened: tuple[type[EventBackend], Settings, EventBackend],
) -> None:
    _, _, log = opened
    assert log.stats()[1:] == (0, None)
    for h in range(6):
        log.record("drift.ok", time_ms=1000 * h, key=f"drift@{h}")
    size, rows, oldest = log.stats()
    assert (rows, oldest) == (6, 0) and size > 0
    assert log.trim(3000) == 3
    assert log.trim(3000) == 0
    assert log.stats()[1:] == (3, 3000)
    assert [e.time_ms for e in log.recent()] == [3000, 4000, 5000]
    assert log.find("drift@0") is None
    assert log.record("drift.ok", time_ms=0, key="drift@0") is True  # a trimmed key may come again


def test_what_is_written_outlives_close_and_close_is_idempotent(
    opened: tuple[type[EventBackend], Settings, EventBackend],
) -> None:
    cls, settings, log = opened
    log.record("model.trained", time_ms=5, key="train:1", version="1")
    assert log.flush() == 0  # nothing waits: PostgreSQL answered
    log.close()
    log.close()
    again = cls(settings)
    try:
        assert again.find("train:1") is not None
        assert again.record("model.trained", time_ms=5, key="train:1") is False
        assert again.count("model.trained") == 1
    finally:
        again.close()


def test_a_rolling_window_keeps_its_size_on_disk(opened: tuple[type[EventBackend], Settings, EventBackend]) -> None:
    """Hourly events trimmed hourly to a 2-day window: once the window is full the store's bytes
    stop growing (PostgreSQL grew by every delete until autovacuum came, a day of the window
    later: retention vacuums after it deletes)."""
    _, _, log = opened
    hour, window = 3_600_000, 48
    sizes = []
    for h in range(24 * 8):
        for i in range(5):
            log.record("monitor.breach", time_ms=h * hour, key=f"b{h}:{i}", hour=h, note="x" * 200)
        log.trim((h - window) * hour)
        if h % 24 == 23:
            sizes.append(log.stats()[0])
    assert log.stats()[1] == 5 * (window + 1)  # hours h - window .. h
    assert sizes[-1] <= 1.2 * sizes[2], sizes  # day 3 (the window full) against day 8
