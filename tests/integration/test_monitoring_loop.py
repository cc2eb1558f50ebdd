"""The closed loop, for real: feature store, LightGBM training, MLflow registry, the forecast API,
the pipeline's forecaster and prediction log, evaluation, alarm policy and retraining.

The champion is trained on a calm fee regime; then the fee level starts to swing with a 20-minute
period (rtml.monitoring.scenario: a regime the calm data never showed, and one a 5-minute-ahead
forecaster can learn from its lags). The champion's forecasts of the new regime make its hourly wQL breach the
threshold; after three breaches the alarm fires, retraining starts, the candidate beats the
baselines and the champion at the gate and is promoted.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pandas as pd
import pytest

from rtml.config import Settings
from rtml.features.writer import FeatureStoreSink
from rtml.model import registry
from rtml.model.train import train
from rtml.monitoring.events import EventLog
from rtml.monitoring.loop import run_monitoring_pass
from rtml.monitoring.scenario import swinging_fee_minutes

START = pd.Timestamp("2024-10-01T00:00:00Z")
CALM_HOURS, SWING_HOURS = 6, 6


def test_degrading_model_breaches_alarms_retrains_and_is_replaced(settings: Settings, log_pipeline_forecasts: Callable[..., int]) -> None:
    minutes = swinging_fee_minutes(START, CALM_HOURS, SWING_HOURS)
    sink = FeatureStoreSink(settings)
    sink.write_frame(minutes)
    sink.close()
    shift = START + pd.Timedelta(hours=CALM_HOURS)

    first = train(settings, minutes=minutes[minutes["minute"] < shift])
    if not first.promoted:  # a person may promote the first model; the gate judged it against baselines only
        registry.promote(settings, first.version, reason="test: first champion")
    assert registry.champion_version(settings) == first.version

    # The pipeline's champion forecasts every minute of the last calm hour and the new regime.
    end = minutes["minute"].max() + pd.Timedelta(minutes=1)
    sent = log_pipeline_forecasts(settings, minutes, shift - pd.Timedelta(hours=1), end)
    assert sent == 7 * 60 + 1

    log = EventLog(settings)
    before = log.recent(limit=1)[-1].id
    report = run_monitoring_pass(settings)
    events = log.recent(after_id=before, limit=1000)
    log.close()

    judged = {v["hour"]: v for v in report.judged}
    calm = judged[(shift - timedelta(hours=1)).isoformat()]
    assert not calm["breach"] and calm["wql"] < 0.24
    swing = [v for v in report.judged if pd.Timestamp(v["hour"]) >= shift]
    assert all(v["breach"] and v["model_version"] == first.version for v in swing[:3])
    assert report.alarm and report.trigger == "alarm"

    kinds = [e.kind for e in events]
    assert kinds[:3] == ["monitor.breach"] * 3
    assert kinds[3] == "monitor.alarm"
    assert kinds[-3:] == ["retrain.started", "model.gate", "model.promoted"]
    started, gate, promoted = events[-3:]
    alarms = [e for e in events if e.kind == "monitor.alarm"]  # a second streak of 3 raises a second one
    assert started.details["reason"] == "alarm" and started.details["event_id"] == alarms[-1].id
    new_version = report.outcome["version"] if report.outcome else None
    assert gate.details["version"] == new_version and gate.details["promote"] is True
    assert promoted.details == {**promoted.details, "version": new_version, "previous": first.version}
    assert registry.champion_version(settings) == new_version != first.version


def test_callers_forecasts_are_never_judged(settings: Settings, log_pipeline_forecasts: Callable[..., int]) -> None:
    """Anyone who can reach the port can log forecasts (POST /forecast rows, what-if minutes, GET):
    they are kept under their own kind, and neither the judged hours nor the dashboard's judged
    band see them, so they can neither fake a breach nor hide one."""
    from rtml.model.train import bootstrap_champion
    from rtml.monitoring.dashboard_api import forecasts_payload
    from rtml.monitoring.evaluate import forecasts_frame, hourly_quality, join_actuals
    from rtml.serving.prediction_log import PredictionLog, PredictionRecord, read_judged, read_predictions

    start = pd.Timestamp.now(tz="UTC").floor("h") - pd.Timedelta(hours=4)
    minutes = swinging_fee_minutes(start, 4, 0)
    sink = FeatureStoreSink(settings)
    sink.write_frame(minutes)
    sink.close()
    end = minutes["minute"].max() + pd.Timedelta(minutes=1)
    assert bootstrap_champion(settings, end.to_pydatetime()) is not None
    sent = log_pipeline_forecasts(settings, minutes, start + pd.Timedelta(hours=1), end)
    assert sent == 3 * 60 + 1

    # Hostile forecasts for every judged minute: absurdly wrong, and one more version's worth.
    log = PredictionLog(settings)
    for record in read_predictions(settings):
        for kind in ("batch", "online", "what-if"):
            log.record(PredictionRecord(record.logged_ms + 1, "666", record.feature_time_ms, record.target_minute_ms,
                                        1e12, 1e12, 1e12, 0.1, kind))  # fmt: skip
    log.flush()
    log.close()
    assert {r.kind for r in read_predictions(settings)} == {"pipeline", "batch", "online", "what-if"}

    report = run_monitoring_pass(settings)
    expected = hourly_quality(join_actuals(forecasts_frame(read_judged(settings, 0, 1 << 62)), minutes))
    expected = expected[expected["hour"] < end.floor("h")]
    assert [v["hour"] for v in report.judged] == [h.isoformat() for h in expected["hour"]]
    assert [v["wql"] for v in report.judged] == pytest.approx(list(expected["wql"]))
    assert {v["model_version"] for v in report.judged} == {"1"} and not any(v["breach"] for v in report.judged)
    band = forecasts_payload(settings, 6)
    assert band["p50"] and max(band["p50"]) < 1e12 and set(band["model_version"]) == {"1"}


def test_a_lasting_drift_retrains_once_per_gap_of_event_time(settings: Settings) -> None:
    """Drift that persists (say a champion trained on the first hour) raises an alert at every
    check; it starts a retraining only once per `scheduler.drift_retrain_gap_s` of event time."""
    from rtml.monitoring.loop import retrain_trigger

    gap = timedelta(seconds=settings.scheduler.drift_retrain_gap_s)
    t0 = START.to_pydatetime()
    log = EventLog(settings)
    try:
        assert retrain_trigger(settings, log, False, t0) is None
        log.record("drift.alert", share=1.0)
        assert retrain_trigger(settings, log, False, t0) == ("drift", {"event_id": 1, "share": 1.0})
        log.record("retrain.started", reason="drift", clock=t0.isoformat())
        log.record("drift.alert", share=0.67)  # the next check still sees drift
        assert retrain_trigger(settings, log, False, t0 + timedelta(hours=1)) is None
        assert retrain_trigger(settings, log, False, t0 + gap - timedelta(minutes=1)) is None
        trigger = retrain_trigger(settings, log, False, t0 + gap)
        assert trigger is not None and trigger[0] == "drift" and trigger[1]["share"] == 0.67
        log.record("monitor.alarm", wql=0.5)  # an alarm is never held back by the gap
        alarm = retrain_trigger(settings, log, True, t0 + timedelta(minutes=5))
        assert alarm is not None and alarm[0] == "alarm"
    finally:
        log.close()
