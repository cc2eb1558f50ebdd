"""What counts as an outage, how long a component waits, and what it tells (health file, events)."""

from __future__ import annotations

import psycopg
import pytest
import redis

from rtml import outage as outage_module
from rtml.config import Settings
from rtml.monitoring.events import EventLog, open_event_log
from rtml.outage import BACKOFF_MAX_S, Outage, absorbed, read_health, restored, service_of


def wrapped(exc: BaseException) -> RuntimeError:
    """An outage as a caller re-raises it (`raise X from exc`), e.g. the engine's DeliveryError."""
    try:
        raise RuntimeError("FeatureStoreSink refused 3 rows") from exc
    except RuntimeError as outer:
        return outer


@pytest.mark.parametrize(
    ("exc", "service"),
    [
        (redis.exceptions.ConnectionError("Error 111 connecting"), "redis"),
        (redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"), "redis"),
        (redis.exceptions.TimeoutError("timed out"), "redis"),
        (psycopg.OperationalError("the connection is lost"), "postgres"),
        (wrapped(psycopg.OperationalError("terminating connection")), "postgres"),
        (redis.exceptions.ResponseError("WRONGTYPE"), None),  # the request was wrong: not an outage
        (psycopg.errors.UniqueViolation("duplicate key"), None),
        (ValueError("a bug"), None),
    ],
)
def test_service_of_names_the_unreachable_service(exc: BaseException, service: str | None) -> None:
    assert service_of(exc) == service


def test_an_outage_is_waited_out_told_and_closed(settings: Settings) -> None:
    outage = Outage(settings, "aggregate")
    assert read_health(settings, "aggregate")["health"] == "ok"  # type: ignore[index]
    waits = [outage.ride(redis.exceptions.ConnectionError("refused")) for _ in range(12)]
    assert all(w is not None and 0 < w <= BACKOFF_MAX_S for w in waits)
    assert max(w for w in waits if w is not None) > BACKOFF_MAX_S / 2  # it did back off
    assert outage.ride(ValueError("a bug")) is None  # not an outage: the caller raises it
    health = read_health(settings, "aggregate")
    assert health is not None and health["health"] == "degraded" and list(health["services_down"]) == ["redis"]
    assert health["last_error"] == "redis: ConnectionError: refused"

    # A restarted component takes the outage over; a spool-absorbed one outlives loop successes.
    outage = Outage(settings, "aggregate")
    absorbed("postgres", "offline_minutes", "3 records spooled")
    absorbed("postgres", "events", "1 record spooled")
    outage.recovered()  # the loop's round succeeded: redis is back, postgres only once its spool drains
    assert list(read_health(settings, "aggregate")["services_down"]) == ["postgres"]  # type: ignore[index]
    restored("postgres", "events")  # one spool drained, the other still waits
    assert list(read_health(settings, "aggregate")["services_down"]) == ["postgres"]  # type: ignore[index]
    restored("postgres", "offline_minutes")
    assert read_health(settings, "aggregate")["health"] == "ok"  # type: ignore[index]

    events = EventLog(settings)
    try:
        told = [(e.kind, e.details["service"], e.details["component"]) for e in events.recent(prefix="service.")]
        ups = {e.details["service"]: e.details for e in events.recent(prefix="service.up")}
    finally:
        events.close()
    assert told == [
        ("service.down", "redis", "aggregate"),
        ("service.down", "postgres", "aggregate"),
        ("service.up", "redis", "aggregate"),
        ("service.up", "postgres", "aggregate"),
    ]
    assert ups["redis"]["duration_s"] >= 0 and ups["redis"]["down_ms"] <= ups["postgres"]["down_ms"]


def test_events_wait_until_the_event_log_registers(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reporter imports no part: until the event log has registered (its module imported,
    as the CLI does for every component), `service.down` waits in memory, then is recorded once."""
    monkeypatch.setattr(outage_module, "_open_events", None)
    outage = Outage(settings, "ingest")
    outage.ride(redis.exceptions.ConnectionError("refused"))
    events = EventLog(settings)
    try:
        assert events.count("service.down") == 0
        outage_module.record_events_with(open_event_log)
        outage.recovered()  # the next note or round flushes what waits
        assert [(e.kind, e.details["component"]) for e in events.recent(prefix="service.")] == [
            ("service.down", "ingest"),
            ("service.up", "ingest"),
        ]
    finally:
        events.close()
