"""The monitoring and retraining loop (Model Monitor + CloudWatch alarm + retraining pipeline).

One pass (`run_monitoring_pass`, the scheduler's minute job and `rtml monitor`):
1. judge every closed hour not judged yet: logged forecasts joined with the actual minutes,
   wQL / MAE / coverage, `monitor.breach` and `monitor.alarm` events (rtml.monitoring.alarms);
2. decide whether to retrain: an alarm raised in this pass, a `drift.alert` newer than the last
   retraining, or the schedule (no retraining for `RETRAIN_EVERY`);
3. retrain: `retrain.started`, then the model part trains a candidate and puts it through the
   promotion gate, which records `model.gate` and `model.promoted` / `model.rejected`.
Every step is an event in the shared log, so the order of what happened can be read back.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from rtml.config import Settings
from rtml.contracts import datetime_to_ms

if TYPE_CHECKING:
    import pandas as pd

    from rtml.demo import DemoContext
    from rtml.monitoring.alarms import Judgement
    from rtml.monitoring.evaluate import QualityStore
    from rtml.monitoring.events import EventLog

# An hour is judged only with at least this many forecasts with actuals (a sixth of its minutes).
MIN_FORECASTS_PER_HOUR = 10
JUDGED_KINDS = ("online", "batch")
# Scheduled retraining: when nothing retrained the model for this long.
RETRAIN_EVERY = timedelta(days=1)
# Retraining uses the most recent minutes only: after a regime shift the old regime weighs less.
RETRAIN_WINDOW = timedelta(days=7)
# The demo retrains on its last hours (its stage must stay under a minute on 2 busy cores).
DEMO_RETRAIN_WINDOW = timedelta(hours=12)
# Forecasts are read from the prediction log back to this far before the first unjudged hour.
FORECAST_LOOKBACK = timedelta(days=7)


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


def judge_new_hours(settings: Settings, store: QualityStore, events: EventLog) -> Judgement:
    """Join the forecasts of not-yet-judged hours with their actuals and judge every closed hour."""
    import pandas as pd

    from rtml.monitoring.alarms import Judgement, judge_hours
    from rtml.monitoring.evaluate import forecasts_frame, hourly_quality, join_actuals
    from rtml.serving.prediction_log import read_predictions

    last = store.last_hour()
    # A forecast is logged no earlier than its feature time, `horizon` before its target.
    since = datetime_to_ms(last) if last is not None else 0
    records = read_predictions(settings, since_ms=max(0, since - int(FORECAST_LOOKBACK.total_seconds() * 1000)))
    # What-if forecasts answer hypothetical minutes: only online and batch ones face the actuals.
    forecasts = forecasts_frame([r for r in records if r.kind in JUDGED_KINDS])
    if last is not None:
        forecasts = forecasts[forecasts["target_minute"] >= pd.Timestamp(last) + pd.Timedelta(hours=1)]
    if forecasts.empty:
        return Judgement([], False)
    first = forecasts["target_minute"].min().floor("h")
    minutes = read_minutes(settings, first.to_pydatetime(), forecasts["target_minute"].max() + pd.Timedelta(minutes=1))
    if minutes.empty:
        return Judgement([], False)
    # An hour is closed when its last minute has closed (its actual is in the feature store).
    newest = minutes["minute"].max()
    closed_before = (newest + pd.Timedelta(minutes=1)).floor("h")
    joined = join_actuals(forecasts, minutes)
    joined = joined[joined["target_minute"] < closed_before]
    hourly = hourly_quality(joined)
    hourly = hourly[hourly["n"] >= MIN_FORECASTS_PER_HOUR]
    return judge_hours(settings, hourly, store, events)


def retrain_trigger(settings: Settings, events: EventLog, alarm: bool, now: datetime | None = None) -> tuple[str, dict[str, Any]] | None:
    """Why to retrain now, with details for the `retrain.started` event, or None."""
    last_retrain = events.recent(limit=1, prefix="retrain.started")
    after_id = last_retrain[-1].id if last_retrain else 0
    if alarm:
        alarm_event = events.recent(limit=1, prefix="monitor.alarm")[-1]
        return "alarm", {"event_id": alarm_event.id, "wql": alarm_event.details.get("wql")}
    drift = events.recent(limit=1, prefix="drift.alert", after_id=after_id)
    if drift:
        return "drift", {"event_id": drift[-1].id, "share": drift[-1].details.get("share")}
    now = now or datetime.now(UTC)
    last_ms = last_retrain[-1].time_ms if last_retrain else _champion_registered_ms(settings)
    if last_ms is not None and now - datetime.fromtimestamp(last_ms / 1000, UTC) >= RETRAIN_EVERY:
        return "schedule", {"last_retrain_ms": last_ms, "every_s": RETRAIN_EVERY.total_seconds()}
    return None


def _champion_registered_ms(settings: Settings) -> int | None:
    from rtml.model import registry

    version = registry.champion_version(settings)
    if version is None:
        return None
    created = registry.model_info(settings, version).get("registered_ms")
    return int(created) if created is not None else None


def retrain(
    settings: Settings, events: EventLog, reason: str, details: dict[str, Any], window: timedelta = RETRAIN_WINDOW
) -> dict[str, Any]:
    """Record `retrain.started`, train a candidate on the last `window` of minutes, put it through the gate.

    The model part records `model.gate` and `model.promoted` / `model.rejected` itself.
    """
    from rtml.model.train import train_and_gate

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from rtml.features.offline import read_minutes_df

    # The window ends at the newest minute there is (data time, which a replay keeps in the past).
    newest = read_minutes_df(settings)["minute"].max()
    start = None if newest != newest else (newest + timedelta(minutes=1) - window).to_pydatetime()
    events.record("retrain.started", reason=reason, window_s=window.total_seconds(), **details)
    return dict(train_and_gate(settings, start, None))


def run_monitoring_pass(
    settings: Settings, now: datetime | None = None, retrain_window: timedelta = RETRAIN_WINDOW
) -> PassReport:
    """One pass of the loop: judge closed hours, retrain when an alarm, drift or the schedule says so."""
    from rtml.monitoring.evaluate import QualityStore
    from rtml.monitoring.events import EventLog

    store = QualityStore(settings)
    events = EventLog(settings)
    try:
        judgement = judge_new_hours(settings, store, events)
        report = PassReport(
            judged=[
                {"hour": v.hour.isoformat(), "n": v.n, "wql": v.wql, "breach": v.breach, "model_version": v.model_version}
                for v in judgement.verdicts
            ],
            alarm=judgement.alarm,
        )
        trigger = retrain_trigger(settings, events, judgement.alarm, now)
        if trigger is not None:
            report.trigger = trigger[0]
            report.outcome = retrain(settings, events, *trigger, window=retrain_window)
        return report
    finally:
        store.close()
        events.close()


def run_loop(settings: Settings, interval_s: float, stop: threading.Event | None = None) -> None:
    """Passes every `interval_s` until `stop` is set (or forever)."""
    stop = stop or threading.Event()
    while not stop.is_set():
        started = time.monotonic()
        run_monitoring_pass(settings)
        stop.wait(max(0.0, interval_s - (time.monotonic() - started)))


def replay_forecasts(settings: Settings, client: Any, start: datetime, end: datetime, batch: int = 500) -> int:
    """Ask the served model (POST /forecast, batch rows) for a forecast at every closed minute in [start, end).

    `client` is an HTTP client on the forecast API (httpx or FastAPI's TestClient). The API logs
    each forecast with the champion's version, as it would have live; returns how many.
    """
    import pandas as pd

    from rtml.features.dataset import build_training_frame, feature_columns, history_minutes

    lags = settings.features.lags
    minutes = read_minutes(settings, start - timedelta(minutes=history_minutes(lags) + 1), end)
    frame = build_training_frame(minutes, horizon=settings.model.horizon_min, lags=lags)
    last_closed = frame["asof"] - pd.Timedelta(minutes=1)
    frame = frame[(last_closed >= pd.Timestamp(start)) & (last_closed < pd.Timestamp(end))]
    columns = feature_columns(lags)
    values = frame[columns].astype(float).to_numpy()
    stamps = [t.isoformat() for t in last_closed[frame.index]]
    sent = 0
    for lo in range(0, len(frame), batch):
        rows = [
            {"minute": stamps[i], "features": {c: (None if v != v else float(v)) for c, v in zip(columns, values[i], strict=True)}}
            for i in range(lo, min(lo + batch, len(frame)))
        ]
        response = client.post("/forecast", json={"rows": rows})
        response.raise_for_status()
        sent += len(response.json()["forecasts"])
    return sent


def wait_logged(settings: Settings, count: int, since_ms: int, timeout_s: float = 30.0) -> None:
    """Poll the prediction log until `count` forecasts logged since `since_ms` are written."""
    from rtml.serving.prediction_log import read_predictions

    deadline = time.monotonic() + timeout_s
    while len(read_predictions(settings, since_ms=since_ms)) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the API did not log {count} forecasts within {timeout_s:g} s")
        time.sleep(0.1)


def demo_stage(ctx: DemoContext) -> None:
    """Replay the hours around the fee regime shift through the served champion, then run the loop."""
    import httpx

    from rtml.monitoring.events import EventLog

    url = getattr(ctx, "resources", {}).get("serving_url")  # set by the serving stage
    if url is None:
        ctx.summary["monitoring"] = "skipped: the forecast API is not running (no serving stage)"
        return
    settings = ctx.settings
    newest = read_minutes(settings, ctx.shift_at, datetime.now(UTC) + timedelta(minutes=1))["minute"].max()
    start = ctx.shift_at - timedelta(hours=1)
    since_ms = int(time.time() * 1000)
    with httpx.Client(base_url=url, timeout=60) as client:
        sent = replay_forecasts(settings, client, start, newest.to_pydatetime() + timedelta(minutes=1))
    wait_logged(settings, sent, since_ms)
    log = EventLog(settings)
    before = log.recent(limit=1)
    with ctx.console.status("monitoring pass: judging hours, retraining if due"):
        report = run_monitoring_pass(settings, retrain_window=DEMO_RETRAIN_WINDOW)
    events = log.recent(limit=1000, after_id=before[-1].id if before else 0)
    log.close()
    hours = "  ".join(
        f"{v['hour'][11:16]} {v['wql']:.2f}{'!' if v['breach'] else ''}" for v in report.judged
    )
    ctx.summary["forecast quality"] = (
        f"{sent} forecasts replayed from {start:%H:%M} UTC (shift at {ctx.shift_at:%H:%M}); hourly wQL "
        f"(! = breach of {settings.monitoring.wql_threshold}): {hours or 'no hour closed'}"
    )
    ctx.summary["monitoring events"] = " → ".join(
        e.kind for e in events if e.kind.startswith(("monitor.", "retrain.", "model."))
    ) or "none"
    if report.outcome is not None:
        o = report.outcome
        verdict = "promoted: new champion" if o["promoted"] else "rejected by the gate"
        ctx.summary["retraining"] = (
            f"triggered by {report.trigger}: v{o['version']} wQL {o['wql']:.3f} vs {o['best_baseline']} "
            f"{o['best_baseline_wql']:.3f}, {verdict} ({o['seconds']:.0f} s)"
        )
    ctx.summary["dashboard"] = f"{url}/dashboard/ (metrics: {url}/metrics)"
