from __future__ import annotations

import pytest

from rtml.config import Settings, get_settings
from rtml.monitoring.events import EventLog


@pytest.fixture(params=["embedded", "services"])
def log(request: pytest.FixtureRequest, data_dir: object) -> EventLog:
    if request.param == "services":
        settings: Settings = request.getfixturevalue("services_settings")
    else:
        settings = get_settings()
    event_log = EventLog(settings)
    yield event_log
    if request.param == "services":
        event_log._pg.execute(f'DROP SCHEMA IF EXISTS "{settings.namespace}" CASCADE')
    event_log.close()


def test_events_come_back_in_order_and_filtered(log: EventLog) -> None:
    log.record("drift.alert", time_ms=1, share=0.6)
    log.record("model.promoted", time_ms=2, version="3")
    log.record("drift.ok", time_ms=3)
    assert [e.kind for e in log.recent()] == ["drift.alert", "model.promoted", "drift.ok"]
    drift = log.recent(prefix="drift.")
    assert [e.kind for e in drift] == ["drift.alert", "drift.ok"]
    assert drift[0].details == {"share": 0.6}
    assert [e.kind for e in log.recent(after_id=drift[0].id)] == ["model.promoted", "drift.ok"]
