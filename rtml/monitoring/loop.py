"""The monitoring and retraining loop (Model Monitor + CloudWatch alarm + retraining pipeline).

One pass at clock t (`Monitor.pass_at`, the scheduler's minute job; `rtml monitor`):
1. judge every hour closed by t and not judged yet: the pipeline's own forecasts (kind
   `pipeline`, never a caller's) joined with the actual minutes, wQL / MAE / coverage,
   `monitor.breach` and `monitor.alarm` events (rtml.monitoring.alarms);
2. decide whether to retrain: an alarm raised in this pass, or a `drift.alert` newer than the
   last retraining (the daily schedule is a job of its own, `retrain_at`);
3. retrain on [t - window, t): `retrain.started`, then the model part trains a candidate and
   puts it through the promotion gate, which records `model.gate` and `model.promoted` /
   `model.rejected`.
Every step is an event in the shared log, keyed by the hour or boundary it belongs to, so a pass
repeated after a crash records nothing twice and the order of what happened can be read back.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from rtml.config import Settings
from rtml.contracts import datetime_to_ms

if TYPE_CHECKING:
    import pandas as pd

    from rtml.monitoring.alarms import Judgement
    from rtml.monitoring.evaluate import QualityBackend
    from rtml.monitoring.events import EventBackend

# An hour is judged only with at least this many forecasts with actuals (a sixth of its minutes).
MIN_FORECASTS_PER_HOUR = 10
HOUR = timedelta(hours=1)


def read_minutes(settings: Settings, start: datetime, end: datetime) -> pd.DataFrame:
    """Closed minutes with `start <= minute < end` from the feature store's offline table."""
    from rtml.features.offline import read_minutes_df

    return read_minutes_df(settings, start, end)


def champion_version(settings: Settings) -> str | None:
    from rtml.model import registry

    return registry.champion_version(settings)


@dataclass
class PassReport:
    """What one pass did: hours judged, the retraining trigger (if any) and its outcome."""

    judged: list[dict[str, Any]] = field(default_factory=list)
    alarm: bool = False
    trigger: str | None = None
    outcome: dict[str, Any] | None = None


def judge_new_hours(settings: Settings, store: QualityBackend, events: EventBackend, clock: datetime) -> Judgement:
    """Join the pipeline's forecasts of the hours closed by `clock` and not judged yet with their
    actuals (minutes before `clock` only) and judge each of them."""
    import pandas as pd

    from rtml.monitoring.alarms import Judgement, judge_hours
    from rtml.monitoring.evaluate import forecasts_frame, hourly_quality, join_actuals
    from rtml.serving.prediction_log import read_judged

    closed_before = pd.Timestamp(clock).floor("h")
    last = store.last_hour()
    first = pd.Timestamp(last) + HOUR if last is not None else pd.Timestamp(0, tz="UTC")
    if first >= closed_before:
        return Judgement([], False)
    records = read_judged(settings, datetime_to_ms(first.to_pydatetime()), datetime_to_ms(closed_before.to_pydatetime()))
    forecasts = forecasts_frame(records)
    if forecasts.empty:
        return Judgement([], False)
    start = forecasts["target_minute"].min().floor("h")
    minutes = read_minutes(settings, start.to_pydatetime(), closed_before.to_pydatetime())
    if minutes.empty:
        return Judgement([], False)
    hourly = hourly_quality(join_actuals(forecasts, minutes))
    hourly = hourly[hourly["n"] >= MIN_FORECASTS_PER_HOUR]
    return judge_hours(settings, hourly, store, events)


def retrain_trigger(
    settings: Settings, events: EventBackend, alarm: bool, clock: datetime
) -> tuple[str, dict[str, Any]] | None:
    """Why to retrain at `clock`, or None: an alarm of this pass; a drift alert since the last
    retraining, once `scheduler.drift_retrain_gap_s` of event time has passed since it."""
    if alarm:
        alarm_event = events.recent(limit=1, prefix="monitor.alarm")[-1]
        return "alarm", {"event_id": alarm_event.id, "wql": alarm_event.details.get("wql")}
    last_retrain = events.recent(limit=1, prefix="retrain.started")
    after_id = last_retrain[-1].id if last_retrain else 0
    drift = events.recent(limit=1, prefix="drift.alert", after_id=after_id)
    if not drift:
        return None
    if last_retrain and "clock" in last_retrain[-1].details:
        since = clock - datetime.fromisoformat(last_retrain[-1].details["clock"])
        if since < timedelta(seconds=settings.scheduler.drift_retrain_gap_s):
            return None
    return "drift", {"event_id": drift[-1].id, "share": drift[-1].details.get("share")}


def enough_minutes(settings: Settings, clock: datetime) -> bool:
    """Whether `model.min_train_minutes` minutes closed before `clock` (a first model needs them)."""
    from rtml.aggregate.clock import Clock

    reader = Clock(settings)
    try:
        end = reader.nth_minute_end_ms(settings.model.min_train_minutes)
    finally:
        reader.close()
    return end is not None and end <= datetime_to_ms(clock)


def retrain_key(clock: datetime) -> str:
    """The idempotency key of a retraining triggered at `clock` (at most one per boundary)."""
    return f"retrain@{datetime_to_ms(clock)}"


def retrain(
    settings: Settings, events: EventBackend, reason: str, details: dict[str, Any], clock: datetime
) -> dict[str, Any] | None:
    """Train a candidate on [clock - scheduler.retrain_window_s, clock) and put it through the gate.

    Keyed by the boundary: `retrain.started` is recorded once per clock value; when it is there
    already and a gate decision followed it, that training is done and is not redone (None).
    Fewer than `model.min_train_minutes` before `clock`: nothing to train on yet (None).
    """
    from rtml.model.train import train_and_gate

    if not enough_minutes(settings, clock):
        return None
    key = retrain_key(clock)
    window = timedelta(seconds=settings.scheduler.retrain_window_s)
    started = events.record(
        "retrain.started", key=key, reason=reason, clock=clock.isoformat(), window_s=window.total_seconds(), **details
    )
    if not started:
        mark = events.find(key)
        if mark is not None and events.recent(limit=1, prefix="model.gate", after_id=mark.id):
            return None
    return dict(train_and_gate(settings, clock - window, clock))


class Monitor:
    """The minute job: keeps its stores open across boundaries (a 36 h jump is 2,160 passes)."""

    def __init__(self, settings: Settings) -> None:
        from rtml.monitoring.evaluate import open_quality_store
        from rtml.monitoring.events import open_event_log

        self.settings = settings
        self.store = open_quality_store(settings)
        self.events = open_event_log(settings)
        self._judged_through: datetime | None = None

    def pass_at(self, clock: datetime) -> PassReport:
        """Judge the hours closed by `clock` (only when a new hour closed), retrain if an alarm or drift says so."""
        from rtml.monitoring.alarms import Judgement

        hour = clock.replace(minute=0, second=0, microsecond=0)
        judgement = Judgement([], False)
        if self._judged_through is None or hour > self._judged_through:
            judgement = judge_new_hours(self.settings, self.store, self.events, clock)
            self._judged_through = hour
        report = PassReport(
            judged=[
                {"hour": v.hour.isoformat(), "n": v.n, "wql": v.wql, "breach": v.breach, "model_version": v.model_version}
                for v in judgement.verdicts
            ],
            alarm=judgement.alarm,
        )
        trigger = retrain_trigger(self.settings, self.events, judgement.alarm, clock)
        if trigger is not None:
            outcome = retrain(self.settings, self.events, *trigger, clock=clock)
            if outcome is not None:
                report.trigger, report.outcome = trigger[0], outcome
        return report

    def close(self) -> None:
        self.store.close()
        self.events.close()


def run_monitoring_pass(settings: Settings, now: datetime | None = None) -> PassReport:
    """One pass at `now` (default: the pipeline's clock): judge closed hours, retrain when due."""
    from rtml.aggregate.clock import pipeline_clock

    clock = now or pipeline_clock(settings)
    if clock is None:
        return PassReport()
    monitor = Monitor(settings)
    try:
        return monitor.pass_at(clock)
    finally:
        monitor.close()


def run_loop(settings: Settings, interval_s: float, stop: threading.Event | None = None) -> None:
    """Passes every `interval_s` until `stop` is set (or forever)."""
    stop = stop or threading.Event()
    while not stop.is_set():
        started = time.monotonic()
        run_monitoring_pass(settings)
        stop.wait(max(0.0, interval_s - (time.monotonic() - started)))
