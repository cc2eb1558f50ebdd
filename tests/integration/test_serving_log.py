"""The prediction log keeps every forecast and counter, on both profiles."""

from __future__ import annotations

from rtml.config import Settings
from rtml.serving.prediction_log import PredictionLog, PredictionRecord, read_predictions, serving_counters


def _record(i: int, version: str = "1") -> PredictionRecord:
    minute = 1_732_000_000_000 + i * 60_000
    return PredictionRecord(minute + 1, version, minute, minute + 300_000, 1.0 + i, 2.0 + i, 3.0 + i, 0.5, "online")


def test_every_record_and_counter_is_persisted(backend_settings: Settings) -> None:
    log = PredictionLog(backend_settings, flush_interval_s=0.05)
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
    assert read_predictions(backend_settings, limit=3) == records[:3]
    assert serving_counters(backend_settings) == {"forecasts_online": 500.0, "stale_refusals": 2.5}


def test_counters_add_up_across_processes_lifetimes(backend_settings: Settings) -> None:
    for _ in range(2):
        log = PredictionLog(backend_settings)
        log.count("model_swaps", 2)
        log.close()
    assert serving_counters(backend_settings) == {"model_swaps": 4.0}
