"""The periodic jobs of a running pipeline: drift and data quality hourly, model monitoring
every minute, retraining on a schedule. A job that fails is logged and recorded as an event;
it never stops the others.
"""

from __future__ import annotations

import importlib
import logging
import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from rtml.config import Settings, get_settings
from rtml.monitoring.events import EventLog

log = logging.getLogger("rtml.scheduler")


@dataclass
class Job:
    name: str
    interval_s: float
    target: str  # "module:function", called with the settings

    def resolve(self) -> Callable[[Settings], object]:
        module, _, func = self.target.partition(":")
        return getattr(importlib.import_module(module), func)  # type: ignore[no-any-return]


def jobs(settings: Settings) -> list[Job]:
    return [
        Job("drift", settings.drift.interval_s, "rtml.quality.drift:run_drift_check"),
        Job("monitor", 60.0, "rtml.monitoring.loop:run_monitoring_pass"),
    ]


def run_archiver(interval_s: float, stop: threading.Event | None = None) -> None:
    """The archiver component: archive what the stream gained, compact, until SIGTERM."""
    from rtml.archive.parquet_lake import archive_pending, compact

    settings = get_settings()
    stop = stop or threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while True:
        archive_pending(settings)
        if stop.wait(interval_s):
            break
    archive_pending(settings)
    compact(settings)


def run_scheduler(stop: threading.Event | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = get_settings()
    stop = stop or threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    events = EventLog(settings)
    planned = jobs(settings)
    schedule = {job.name: 0.0 for job in planned}
    while not stop.is_set():
        now = time.time()
        for job in planned:
            if now < schedule[job.name]:
                continue
            schedule[job.name] = now + job.interval_s
            try:
                job.resolve()(settings)
                log.info("job %s done", job.name)
            except Exception as exc:  # a failing job must not stop the others
                log.error("job %s failed: %s", job.name, traceback.format_exc())
                events.record("scheduler.job_failed", job=job.name, error=str(exc)[:500])
        stop.wait(1.0)
    events.close()
