"""The prediction store's contract (`PredictionBackend`), for every backend."""

from __future__ import annotations

import pytest
from conformance_kit import Backend, Case, backend_cases

from rtml.config import BACKENDS as PROFILE_BACKENDS
from rtml.config import Settings
from rtml.serving import prediction_store
from rtml.serving.prediction_log import PredictionStore
from rtml.serving.prediction_store import (
    JUDGED_KINDS,
    PostgresPredictionStore,
    PredictionBackend,
    PredictionRecord,
    SqlitePredictionStore,
    open_prediction_store,
)

BACKENDS: dict[type[PredictionBackend], Backend[PredictionBackend]] = {
    SqlitePredictionStore: Backend("embedded", SqlitePredictionStore),
    PostgresPredictionStore: Backend("services", PostgresPredictionStore),
}
case = backend_cases(BACKENDS)
MINUTE_MS = 60_000
T0 = 1_727_740_800_000  # 2024-10-01T00:00Z

Opened = tuple[type[PredictionBackend], Settings, PredictionBackend]


def forecast(minute: int, kind: str, logged_ms: int = 0, p50: float = 2.0) -> PredictionRecord:
    target = T0 + minute * MINUTE_MS
    return PredictionRecord(logged_ms, "1", target - MINUTE_MS, target, 1.0, p50, 3.0, 0.5, kind)


def test_every_backend_is_in_the_suite_and_the_factory_picks_by_profile() -> None:
    assert set(prediction_store._BACKENDS.items()) == {(PROFILE_BACKENDS[b.profile]["predictions"], c) for c, b in BACKENDS.items()}
    assert PredictionStore is open_prediction_store


@pytest.fixture
def opened(case: Case[PredictionBackend]) -> tuple[type[PredictionBackend], Settings, PredictionBackend]:
    """The store under test: `case` runs each test once per class of BACKENDS and closes it."""
    return case.cls, case.settings, case.open()


def test_the_factory_opens_this_backend(opened: Opened) -> None:
    cls, settings, _ = opened
    store = open_prediction_store(settings)
    try:
        assert type(store) is cls
    finally:
        store.close()


def test_records_read_back_in_order_and_a_pipeline_minute_is_logged_once(opened: Opened) -> None:
    _, _, store = opened
    assert store.newest_target_ms("pipeline") is None
    first = [forecast(m, "pipeline", logged_ms=10 + m) for m in range(3)] + [forecast(0, "online", logged_ms=20)]
    store.write(first, {})
    # a re-run after a crash: the pipeline's minute 1 again (skipped), a caller asking twice (kept)
    store.write([forecast(1, "pipeline", logged_ms=30, p50=9.0), forecast(0, "online", logged_ms=31)], {})
    store.settle()
    assert store.read(0, 100) == [*first, forecast(0, "online", logged_ms=31)]
    assert store.read(20, 100) == [forecast(0, "online", logged_ms=20), forecast(0, "online", logged_ms=31)]
    assert store.read(0, 2) == first[:2]
    assert (store.count("pipeline"), store.count("online"), store.count("batch")) == (3, 2, 0)
    assert store.newest_target_ms("pipeline") == T0 + 2 * MINUTE_MS
    judged = store.read_targets(JUDGED_KINDS, T0 + MINUTE_MS, T0 + 3 * MINUTE_MS)
    assert [(r.target_minute_ms, r.p50) for r in judged] == [(T0 + MINUTE_MS, 2.0), (T0 + 2 * MINUTE_MS, 2.0)]
    assert len(store.read_targets(("online", "pipeline"), T0, T0 + MINUTE_MS)) == 3


def test_counters_add_up_across_writes(opened: Opened) -> None:
    _, _, store = opened
    assert store.counters() == {}
    store.write([forecast(0, "online")], {"forecasts_online": 1, "stale_refusals": 2})
    store.write([], {"forecasts_online": 1.5})
    assert store.counters() == {"forecasts_online": 2.5, "stale_refusals": 2.0}
    assert store.count("online") == 1


def test_retention_trims_by_kind_and_stats_follow(opened: Opened) -> None:
    _, _, store = opened
    store.write([forecast(m, kind) for m in range(10) for kind in ("pipeline", "online", "what-if")], {})
    cutoff = T0 + 4 * MINUTE_MS
    assert store.trim(JUDGED_KINDS, cutoff) == 4
    assert store.trim(JUDGED_KINDS, cutoff) == 0
    size, rows, oldest = store.stats(JUDGED_KINDS)
    assert (rows, oldest) == (6, cutoff) and size > 0
    assert store.stats(JUDGED_KINDS, exclude=True)[1:] == (20, T0)  # callers' forecasts untouched
    assert store.trim(JUDGED_KINDS, T0 + 8 * MINUTE_MS, exclude=True) == 16
    assert store.stats(JUDGED_KINDS, exclude=True)[1:] == (4, T0 + 8 * MINUTE_MS)
    assert store.stats(("batch",))[1:] == (0, None)


def test_what_is_written_outlives_close_and_close_is_idempotent(opened: Opened) -> None:
    cls, settings, store = opened
    store.write([forecast(0, "pipeline")], {"forecasts_pipeline": 1})
    store.close()
    store.close()
    again = cls(settings)
    try:
        again.write([forecast(0, "pipeline", logged_ms=5)], {})  # still logged once
        assert again.read(0, 10) == [forecast(0, "pipeline")]
        assert again.counters() == {"forecasts_pipeline": 1.0}
    finally:
        again.close()
