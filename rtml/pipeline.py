"""The composition root: which sinks the engine delivers to, where it reports a lost stream,
which jobs the scheduler runs, and which pages the forecast API carries besides its own
(`serving_app`: the monitoring dashboard).

`rtml up` starts the engine (its sinks: `minute_sinks`, the engine's own minutes table and the
feature store) and the scheduler (`pipeline_scheduler`: the scheduler runs the job table built
here, it never opens this module). Jobs, in the order they fire when several share a boundary t
(nothing reads a minute at or after t):

- `baseline`: once, at the end of the `model.min_baseline_minutes`-th minute: the best
  calibrated baseline becomes a registered champion (unless there is a champion already);
- `first_training`: once, at the end of the `model.min_train_minutes`-th minute: the first
  model, trained on [t - retrain window, t), through the gate (unless a model exists);
- `forecast`: every minute, the champion's forecast of `model.horizon_min` ahead, logged;
- `drift`: every `drift.interval_s`, drift + data quality of the last hour before t;
- `monitor`: every `scheduler.monitor_interval_s`, judge hours closed by t, retrain on an alarm
  or a drift alert;
- `retrain`: every `scheduler.retrain_interval_s`, the scheduled retraining.
- `retention`: every `retention.interval_s` (hourly), every store trimmed to its window
  before t (rtml.ops.retention), last, so the jobs before it at t still see their data.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rtml.aggregate.sinks import MinuteSink, MinutesTable, aggregate_db_path
from rtml.config import Settings
from rtml.ops.scheduler import Job, Scheduler

if TYPE_CHECKING:
    from fastapi import FastAPI


def minute_sinks(settings: Settings, *, live: bool = False) -> list[MinuteSink]:
    """Every sink the engine delivers to, the engine's own table first (the pipeline clock,
    `rtml.aggregate.clock`, relies on that order). Wired here because aggregation is upstream of
    the feature store and never imports it.

    Feast is opened lazily, at the first write, unless `live`: a long-running engine opens it
    now, so the first closed window does not wait seconds for Feast's import.
    """
    from rtml.features.writer import FeatureStoreSink

    return [MinutesTable(aggregate_db_path(settings)), FeatureStoreSink(settings, open_now=live)]


def _at(t_ms: int) -> datetime:
    return datetime.fromtimestamp(t_ms / 1000, UTC)


class PipelineScheduler(Scheduler):
    """The scheduler with the pipeline's jobs, which keep their stores open across boundaries."""

    def __init__(self, settings: Settings) -> None:
        from rtml.aggregate.clock import Clock
        from rtml.monitoring.loop import Monitor
        from rtml.serving.forecaster import Forecaster

        self.forecaster = Forecaster(settings)
        self.monitor = Monitor(settings)
        self.minutes = Clock(settings)
        super().__init__(settings, self._jobs(settings), on_model_change=self.forecaster.model_may_change)

    def _jobs(self, settings: Settings) -> list[Job]:
        from rtml.monitoring.loop import retrain, retrain_key
        from rtml.quality.drift import run_drift_check, scheduled_windows

        events = self.monitor.events

        def baseline(t_ms: int) -> bool:
            from rtml.model.registry import champion_kind
            from rtml.model.train import bootstrap_champion

            return champion_kind(settings) is None and bootstrap_champion(settings, _at(t_ms)) is not None

        def first_training(t_ms: int) -> bool:
            from rtml.model.registry import has_trained_model

            # A model trained by hand makes this one moot; one this job started (its key is
            # there) is finished or redone by `retrain`.
            if events.find(retrain_key(_at(t_ms))) is None and has_trained_model(settings):
                return False
            return retrain(settings, events, "first", {}, _at(t_ms)) is not None

        def drift(t_ms: int) -> None:
            first = self.minutes.first_minute_ms()
            assert first is not None  # a boundary exists only once a minute does
            reference, current = scheduled_windows(settings, _at(t_ms), _at(first))
            run_drift_check(settings, reference, current, now=_at(t_ms), transactions=False, key=f"drift@{t_ms}")

        def monitor(t_ms: int) -> bool:
            return self.monitor.pass_at(_at(t_ms)).outcome is not None

        def scheduled(t_ms: int) -> bool:
            details = {"every_s": settings.scheduler.retrain_interval_s}
            return retrain(settings, events, "schedule", details, _at(t_ms)) is not None

        def retention(t_ms: int) -> None:
            from rtml.ops.retention import run_retention

            run_retention(settings, t_ms)

        s = settings.scheduler
        return [
            Job("baseline", baseline, after_minutes=settings.model.min_baseline_minutes, changes_model=True),
            Job("first_training", first_training, after_minutes=settings.model.min_train_minutes, changes_model=True),
            Job("forecast", self.forecaster.forecast_at, every_ms=60_000),
            Job("drift", drift, every_ms=int(settings.drift.interval_s * 1000)),
            Job("monitor", monitor, every_ms=int(s.monitor_interval_s * 1000), changes_model=True),
            Job("retrain", scheduled, every_ms=int(s.retrain_interval_s * 1000), changes_model=True),
            Job("retention", retention, every_ms=int(settings.retention.interval_s * 1000)),
        ]

    def close(self) -> None:
        super().close()
        self.forecaster.close()
        self.monitor.close()
        self.minutes.close()


def pipeline_scheduler(settings: Settings) -> Scheduler:
    """The scheduler `rtml scheduler` runs (`rtml.ops.scheduler.run_scheduler` is handed this)."""
    return PipelineScheduler(settings)


def stream_reset_recorder(settings: Settings) -> Callable[[dict[str, Any]], None]:
    """The engine's `on_reset`: a lost stream (`rtml.aggregate.recovery`) becomes a `stream.reset`
    event, keyed by the lost stream's name, so a re-delivery after a crash records it once."""

    def record(details: dict[str, Any]) -> None:
        from rtml.monitoring.events import EventLog

        events = EventLog(settings)
        try:
            events.record("stream.reset", key=f"stream.reset:{details['old_stream']}", **details)
        finally:
            events.close()

    return record


def serving_app(settings: Settings, *, poll_s: float = 1.0) -> FastAPI:
    """The forecast API that `rtml serve` runs: serving's own endpoints plus the monitoring
    dashboard, whose router also puts the whole pipeline's metrics on `/metrics`. Wired here
    because serving is upstream of monitoring and never imports it."""
    from rtml.monitoring.dashboard_api import build_router
    from rtml.serving.app import create_app

    return create_app(settings, routers=[build_router(settings)], poll_s=poll_s)
