from __future__ import annotations

from collections.abc import Iterator

import pytest

from rtml.config import Settings
from rtml.monitoring.events import EventBackend, EventLog


@pytest.fixture
def log(backend_settings: Settings) -> Iterator[EventBackend]:
    event_log = EventLog(backend_settings)
    yield event_log
    event_log.close()


def test_events_come_back_in_order_and_filtered(log: EventBackend) -> None:
    log.record("drift.alert", time_ms=1, share=0.6)
    log.record("model.promoted", time_ms=2, version="3")
    log.record("drift.ok", time_ms=3)
    assert [e.kind for e in log.recent()] == ["drift.alert", "model.promoted", "drift.ok"]
    drift = log.recent(prefix="drift.")
    assert [e.kind for e in drift] == ["drift.alert", "drift.ok"]
    assert drift[0].details == {"share": 0.6}
    assert [e.kind for e in log.recent(after_id=drift[0].id)] == ["model.promoted", "drift.ok"]
