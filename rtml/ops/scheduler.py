"""The scheduler: jobs fire on boundaries of the pipeline's event-time clock, each exactly once.

The clock (rtml.aggregate.clock) is the end of the newest closed minute. A periodic job with
cadence I fires at every multiple of I (epoch-aligned, so hourly jobs fire on the hour) after
the first minute of data; a milestone job fires once, at the end of its n-th minute. Whatever
the clock did since the last look (one minute live, hours in a `--speed max` replay), the due
boundaries of all jobs run in time order, ties in the order of the job list, each with its
boundary t as "now": nothing a job does at t may read a minute at or after t.

The last boundary each job completed is kept in `<data_dir>/scheduler.sqlite`, written after
the job returns. A crash (SIGKILL included) between a job's effect and that write re-runs the
job at the same boundary on restart, never skips one: so every job's effect is idempotent per
(job, boundary) (keyed events, upserts keyed by target minute, trainings keyed by boundary). A
job that fails is tried again, ATTEMPTS times in all, then logged and recorded as an event, and
its boundary counts as done: a broken job must not stall the clock for the others. A job that
fails because a service is unreachable (PostgreSQL or Redis down, records still spooled: see
`rtml.spool.unreachable`) is not broken: it waits for the service with backoff (up to
WAIT_MAX_S), spending no attempt, and records `scheduler.job_waiting` once; the boundaries
after it wait too, in order, so a PostgreSQL outage delays boundaries and never loses one.

The archiver component (`run_archiver`) also lives here: it is periodic on wall time, since it
only copies what the stream holds.
"""

from __future__ import annotations

import logging
import signal
import sqlite3
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from rtml.config import Settings, get_settings
from rtml.spool import unreachable

log = logging.getLogger("rtml.scheduler")

# A failing job is tried again (a store that another process is still creating, a dropped
# connection) before its boundary is given up.
ATTEMPTS, RETRY_S = 3, 1.0
# A job that fails because a service is unreachable waits for it instead, backing off to this.
# (rtml.outage's bound: a returned service is noticed within it, by every component alike.)
WAIT_MAX_S = 5.0
# Jobs slower than this are logged with their duration (trainings, drift checks).
SLOW_S = 1.0
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (name TEXT PRIMARY KEY, last_ms INTEGER NOT NULL, fired INTEGER NOT NULL);
-- the clock value the scheduler last found nothing due at (what "caught up and idle" means)
CREATE TABLE IF NOT EXISTS idle (id INTEGER PRIMARY KEY CHECK (id = 1), clock_ms INTEGER NOT NULL);
"""


# How long each job's boundaries took: what a soak watches for creeping costs. Wall seconds, and
# the scheduler process's CPU seconds, which another process's load on the machine hardly moves.
# Boundaries of a `changes_model` job that changed the model count under `<name>.model`.
DURATIONS_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS durations (name TEXT PRIMARY KEY, last_s REAL NOT NULL, total_s REAL NOT NULL,"
    " runs INTEGER NOT NULL, cpu_s REAL NOT NULL DEFAULT 0)"
)


def _durations_table(db: sqlite3.Connection) -> None:
    db.execute(DURATIONS_SCHEMA)
    if "cpu_s" not in {row[1] for row in db.execute("PRAGMA table_info(durations)")}:  # made before cpu_s
        db.execute("ALTER TABLE durations ADD COLUMN cpu_s REAL NOT NULL DEFAULT 0")


@dataclass
class Job:
    """`run(t_ms)` does the job's work for boundary t; exactly one of `every_ms` / `after_minutes`.

    A `changes_model` job returns whether it may have changed the champion.
    """

    name: str
    run: Callable[[int], object]
    every_ms: int | None = None
    after_minutes: int | None = None
    changes_model: bool = False


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(ms / 1000))


class Scheduler:
    """Fires the due boundaries of `jobs` against the clock; state in `<data_dir>/scheduler.sqlite`."""

    def __init__(self, settings: Settings, jobs: list[Job], on_model_change: Callable[[], None] = lambda: None) -> None:
        from rtml.aggregate.clock import Clock
        from rtml.monitoring.events import EventLog

        self.settings = settings
        self.jobs = jobs
        self.clock = Clock(settings)
        self.events = EventLog(settings)
        self.on_model_change = on_model_change
        self._db = sqlite3.connect(settings.path("scheduler.sqlite"), timeout=30, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        _durations_table(self._db)
        self._idle_at: int | None = None
        self._waiting: tuple[str, int] | None = None
        self.last: dict[str, int] = dict(self._db.execute("SELECT name, last_ms FROM jobs").fetchall())

    def due(self, now_ms: int) -> list[tuple[int, int]]:
        """(boundary, job index) pairs not fired yet with boundary <= now_ms, in firing order."""
        first = self.clock.first_minute_ms()
        if first is None:
            return []
        out: list[tuple[int, int]] = []
        for index, job in enumerate(self.jobs):
            last = self.last.get(job.name)
            if job.after_minutes is not None:
                at = self.clock.nth_minute_end_ms(job.after_minutes)
                if at is not None and at <= now_ms and last is None:
                    out.append((at, index))
                continue
            assert job.every_ms is not None
            start = first if last is None else last
            boundary = (start // job.every_ms + 1) * job.every_ms
            out.extend((b, index) for b in range(boundary, now_ms + 1, job.every_ms))
        out.sort()
        return out

    def fire(self, boundary: int, job: Job, stop: threading.Event | None = None) -> None:
        from rtml.aggregate.clock import current_boundary

        changed = True
        started, cpu_started = time.monotonic(), time.process_time()
        token = current_boundary.set(boundary)  # what the job records is stamped with its boundary
        try:
            attempt, wait_s = 0, 0.0
            while attempt < ATTEMPTS:
                try:
                    changed = bool(job.run(boundary))
                    if time.monotonic() - started > SLOW_S:
                        log.info("job %s at %s took %.1f s", job.name, _iso(boundary), time.monotonic() - started)
                    break
                except Exception as exc:  # a failing job must not stop the others
                    if unreachable(exc):
                        # A service is down (or records still wait in its spool): no attempt is
                        # spent; the job waits for it, so its boundary is neither lost nor skipped.
                        wait_s = min(max(wait_s * 2, RETRY_S), WAIT_MAX_S)
                        log.warning("job %s at %s waits %.0f s for a service: %s", job.name, _iso(boundary), wait_s, exc)
                        self._note_wait(job, boundary, exc)
                        if (stop or threading.Event()).wait(wait_s):
                            return  # not done: the next start runs this boundary again
                        continue
                    attempt += 1
                    log.error("job %s at %d failed (attempt %d): %s", job.name, boundary, attempt, traceback.format_exc())
                    if attempt < ATTEMPTS and not (stop or threading.Event()).wait(RETRY_S * attempt):
                        continue
                    self.events.record(
                        "scheduler.job_failed", key=f"{job.name}@{boundary}:failed", job=job.name,
                        boundary_ms=boundary, attempts=attempt, error=str(exc)[:500],
                    )  # fmt: skip
                    break
        finally:
            current_boundary.reset(token)
        self._db.execute(
            "INSERT INTO durations VALUES (?, ?, ?, 1, ?) ON CONFLICT(name) DO UPDATE SET last_s = excluded.last_s,"
            " total_s = total_s + excluded.last_s, runs = runs + 1, cpu_s = cpu_s + excluded.cpu_s",
            # a boundary that retrained or promoted is timed apart: it says nothing of the pass itself
            (
                f"{job.name}.model" if job.changes_model and changed else job.name,
                *[time.monotonic() - started] * 2,
                time.process_time() - cpu_started,
            ),
        )
        if job.changes_model and changed:
            self.on_model_change()
        self._db.execute(
            "INSERT INTO jobs VALUES (?, ?, 1) ON CONFLICT(name) DO UPDATE SET last_ms = excluded.last_ms,"
            " fired = fired + 1",
            (job.name, boundary),
        )
        self.last[job.name] = boundary

    def _note_wait(self, job: Job, boundary: int, exc: Exception) -> None:
        """`scheduler.job_waiting`, once per job and boundary (spooled while PostgreSQL is down)."""
        if (job.name, boundary) == self._waiting:
            return
        self._waiting = (job.name, boundary)
        try:
            self.events.record(
                "scheduler.job_waiting", key=f"{job.name}@{boundary}:waiting", job=job.name,
                boundary_ms=boundary, error=str(exc)[:500],
            )  # fmt: skip
        except Exception:  # noqa: BLE001 - the log line above says it already
            log.exception("could not record scheduler.job_waiting")

    def catch_up(self, stop: threading.Event | None = None) -> int:
        """Fire every boundary due at the current clock; returns how many fired."""
        now_ms = self.clock.now_ms()
        if now_ms is None:
            return 0
        try:
            self.events.flush()  # events spooled during a PostgreSQL outage (rtml.spool)
        except Exception as exc:  # noqa: BLE001 - they stay spooled for the next poll
            log.debug("event spool not drained: %s", exc)
        fired = 0
        for boundary, index in self.due(now_ms):
            if stop is not None and stop.is_set():
                break
            self.fire(boundary, self.jobs[index], stop)
            fired += 1
        if fired == 0 and self._idle_at != now_ms:
            self._db.execute("INSERT OR REPLACE INTO idle VALUES (1, ?)", (now_ms,))
            self._idle_at = now_ms
        return fired

    def close(self) -> None:
        self._db.close()
        self.clock.close()
        self.events.close()


def scheduler_state(settings: Settings) -> tuple[dict[str, tuple[int, int]], int | None]:
    """Job name -> (last boundary fired in epoch ms, boundaries fired), and the clock (epoch ms)
    at which the scheduler last found nothing due; for status, the demo and tests."""
    path = settings.root / "scheduler.sqlite"
    if not path.exists():
        return {}, None
    db = sqlite3.connect(path, timeout=30)
    try:
        db.executescript(SCHEMA)
        jobs = {n: (last, fired) for n, last, fired in db.execute("SELECT name, last_ms, fired FROM jobs")}
        idle = db.execute("SELECT clock_ms FROM idle WHERE id = 1").fetchone()
        return jobs, idle[0] if idle else None
    finally:
        db.close()


def job_durations(settings: Settings) -> dict[str, tuple[float, float, int, float]]:
    """Job name -> (wall seconds of its last boundary, of all boundaries, boundaries, CPU seconds of
    all boundaries): for soaks."""
    path = settings.root / "scheduler.sqlite"
    if not path.exists():
        return {}
    db = sqlite3.connect(path, timeout=30)
    try:
        _durations_table(db)
        rows = db.execute("SELECT name, last_s, total_s, runs, cpu_s FROM durations")
        return {n: (last, total, runs, cpu) for n, last, total, runs, cpu in rows}
    finally:
        db.close()


def run_archiver(interval_s: float, stop: threading.Event | None = None) -> None:
    """The archiver component: archive what the stream gained, compact, until SIGTERM."""
    from rtml.archive.parquet_lake import archive_pending, compact
    from rtml.outage import Outage

    settings = get_settings()
    stop = stop or threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    outage = Outage(settings, "archiver")
    wait = interval_s
    while True:
        try:
            archive_pending(settings)
            outage.recovered()
            wait = interval_s
        except Exception as exc:
            # Redis down: nothing archived past the committed offset is lost; try again soon.
            if (retry := outage.ride(exc)) is None:
                raise
            wait = min(retry, interval_s)
        if stop.wait(wait):
            break
    archive_pending(settings)
    compact(settings)


def run_scheduler(open_scheduler: Callable[[Settings], Scheduler], stop: threading.Event | None = None) -> None:
    """The scheduler component: catch up with the clock, wait `scheduler.poll_s`, until SIGTERM.

    `open_scheduler` builds the scheduler with its job table: the composition root's
    (`rtml.pipeline.pipeline_scheduler`), which the scheduler does not import. A SIGTERM lets the
    boundary in progress finish (its state is then written); the next start goes on from there.
    """
    from rtml.outage import Outage

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = get_settings()
    stop = stop or threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    scheduler = open_scheduler(settings)
    outage = Outage(settings, "scheduler")
    try:
        while not stop.is_set():
            try:
                fired = scheduler.catch_up(stop)
                outage.recovered()
            except Exception as exc:
                # A service down outside a job (a job waits for its own, in `fire`): wait it out.
                if (retry := outage.ride(exc)) is None:
                    raise
                stop.wait(retry)
                continue
            if fired == 0:
                stop.wait(settings.scheduler.poll_s)
    finally:
        scheduler.close()
