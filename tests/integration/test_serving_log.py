"""The prediction log keeps every forecast and counter, on both profiles."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rtml.config import Settings, get_settings
from rtml.serving.prediction_log import PredictionLog, PredictionRecord, read_predictions, serving_counters


@pytest.fixture(params=["embedded", "services"])
def log_settings(request: pytest.FixtureRequest, data_dir: object) -> Iterator[Settings]:
    if request.param == "services":
        settings: Settings = request.getfixturevalue("services_settings")
    else:
        settings = get_settings()
    yield settings
    if request.param == "services":
        import psycopg
        import redis

        with psycopg.connect(settings.postgres_dsn, autocommit=True) as pg:
            pg.execute(f'DROP SCHEMA IF EXISTS "{settings.namespace}" CASCADE')
        redis.Redis.from_url(settings.redis_url).delete(f"{settings.namespace}:counters:serving")


def _record(i: int, version: str = "1") -> PredictionRecord:
    minute = 1_732_000_000_000 + i * 60_000
    return PredictionRecord(minute + 1, version, minute, minute + 300_000, 1.0 + i, 2.0 + i, 3.0 + i, 0.5, "online")


def test_every_record_and_counter_is_persisted(log_settings: Settings) -> None:
    log = PredictionLog(log_settings, flush_interval_s=0.05)
    records = [_record(i, version=str(1 + i % 2)) for i in range(500)]
    for i, record in enumerate(records):
        log.record(record)
        log.count("forecasts_online")
        if i % 100 == 0:
            log.count("stale_refusals", 0.5)
    log.flush()
    assert log.read() == records
    assert log.read(since_ms=records[400].logged_ms) == records[400:]
    log.close()  # the counters' last increments are written on close
    assert read_predictions(log_settings, limit=3) == records[:3]
    assert serving_counters(log_settings) == {"forecasts_online": 500.0, "stale_refusals": 2.5}


def test_counters_add_up_across_processes_lifetimes(log_settings: Settings) -> None:
    for _ in range(2):
        log = PredictionLog(log_settings)
        log.count("model_swaps", 2)
        log.close()
    assert serving_counters(log_settings) == {"model_swaps": 4.0}
