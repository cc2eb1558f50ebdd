"""The scheduler's boundaries on the event-time clock: time order, ties in job order, each once,
also across a clock jump and a restart (jobs here only record what they were asked to do)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from rtml.aggregate.sinks import MinutesTable, aggregate_db_path
from rtml.config import Settings
from rtml.contracts import MinuteFeatures, ms_to_datetime
from rtml.ops.scheduler import Job, Scheduler, scheduler_state

START_MS = int(datetime(2024, 10, 1, 22, 30, tzinfo=UTC).timestamp() * 1000)
MINUTE_MS, HOUR_MS = 60_000, 3_600_000


def close_minutes(settings: Settings, first: int, count: int) -> None:
    """What the engine's own sink does when minutes close."""
    table = MinutesTable(aggregate_db_path(settings))
    table.upsert(
        [
            MinuteFeatures(ms_to_datetime(m), 10, 1000, 100.0, ms_to_datetime(m + MINUTE_MS), 1)
            for m in range(START_MS + first * MINUTE_MS, START_MS + (first + count) * MINUTE_MS, MINUTE_MS)
        ]
    )
    table.close()


def scheduler(settings: Settings, fired: list[tuple[int, str]]) -> Scheduler:
    def job(name: str) -> Job:
        return Job(name, lambda t: fired.append((t, name)))

    jobs = [job("once"), job("minute"), job("hour"), job("day")]
    jobs[0].after_minutes = 45
    jobs[1].every_ms, jobs[2].every_ms, jobs[3].every_ms = MINUTE_MS, HOUR_MS, 24 * HOUR_MS
    return Scheduler(settings, jobs)


def test_boundaries_fire_once_in_time_order_across_a_jump_and_a_restart(settings: Settings) -> None:
    fired: list[tuple[int, str]] = []
    s = scheduler(settings, fired)
    assert s.catch_up() == 0  # no minute closed: no clock, nothing due
    close_minutes(settings, 0, 20)
    assert s.catch_up() == 20
    assert fired == [(START_MS + (i + 1) * MINUTE_MS, "minute") for i in range(20)]

    # The clock jumps by 4 h 40 min at once (a --speed max replay).
    close_minutes(settings, 20, 280)
    fired.clear()
    s.catch_up()
    clock = START_MS + 300 * MINUTE_MS
    minutes = list(range(START_MS + 21 * MINUTE_MS, clock + 1, MINUTE_MS))
    hours = list(range((START_MS // HOUR_MS + 1) * HOUR_MS, clock + 1, HOUR_MS))
    day = (START_MS // (24 * HOUR_MS) + 1) * 24 * HOUR_MS
    assert sorted(b for b, n in fired if n == "minute") == minutes
    assert [b for b, n in fired if n == "hour"] == hours and all(h % HOUR_MS == 0 for h in hours)
    assert [b for b, n in fired if n == "day"] == [day]
    assert [b for b, n in fired if n == "once"] == [START_MS + 45 * MINUTE_MS]
    order = {"once": 0, "minute": 1, "hour": 2, "day": 3}
    assert fired == sorted(fired, key=lambda f: (f[0], order[f[1]]))  # ties in the job list's order
    s.close()

    # A restart goes on from the persisted boundaries: nothing fires twice, nothing is skipped.
    fired.clear()
    again = scheduler(settings, fired)
    assert again.catch_up() == 0 and fired == []
    close_minutes(settings, 300, 2)
    again.catch_up()
    assert fired == [(clock + MINUTE_MS, "minute"), (clock + 2 * MINUTE_MS, "minute")]
    assert again.catch_up() == 0  # caught up: idle at the clock
    again.close()
    jobs, idle = scheduler_state(settings)
    assert jobs["minute"] == (clock + 2 * MINUTE_MS, 302) and jobs["once"][1] == 1 and idle == clock + 2 * MINUTE_MS


def test_a_failing_job_is_retried_then_recorded_and_the_others_go_on(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rtml.ops.scheduler as scheduler_module
    from rtml.monitoring.events import EventLog

    monkeypatch.setattr(scheduler_module, "RETRY_S", 0.0)  # no waiting between attempts here
    attempts: list[int] = []
    fired: list[int] = []

    def broken(t: int) -> None:
        attempts.append(t)
        raise RuntimeError("store unreachable")

    close_minutes(settings, 0, 2)
    s = Scheduler(settings, [Job("broken", broken, every_ms=MINUTE_MS), Job("ok", fired.append, every_ms=MINUTE_MS)])
    s.catch_up()
    s.close()
    first, second = START_MS + MINUTE_MS, START_MS + 2 * MINUTE_MS
    assert attempts == [first] * 3 + [second] * 3 and fired == [first, second]
    log = EventLog(settings)
    failures = log.recent(prefix="scheduler.job_failed")
    log.close()
    assert [(e.details["boundary_ms"], e.details["attempts"]) for e in failures] == [(first, 3), (second, 3)]


def test_job_durations_count_wall_and_cpu_seconds_also_in_an_older_table(settings: Settings) -> None:
    """A soak reads each job's CPU seconds beside its wall seconds; a scheduler.sqlite made before
    CPU time was recorded gains the column and keeps its figures."""
    import sqlite3
    import time

    from rtml.ops.scheduler import job_durations

    db = sqlite3.connect(settings.path("scheduler.sqlite"))
    db.execute(
        "CREATE TABLE durations (name TEXT PRIMARY KEY, last_s REAL NOT NULL, total_s REAL NOT NULL, runs INTEGER NOT NULL)"
    )
    db.execute("INSERT INTO durations VALUES ('busy', 1.0, 5.0, 4)")
    db.commit()
    db.close()

    def busy(_: int) -> None:
        until = time.process_time() + 0.05
        while time.process_time() < until:
            pass

    def idle(_: int) -> None:
        time.sleep(0.05)

    close_minutes(settings, 0, 2)  # two boundaries of each job
    s = Scheduler(settings, [Job("busy", busy, every_ms=MINUTE_MS), Job("idle", idle, every_ms=MINUTE_MS)])
    s.catch_up()
    _, total, runs, cpu = job_durations(settings)["busy"]
    assert runs == 6 and total >= 5.1 and cpu >= 0.1  # the older figures plus two boundaries
    _, total, runs, cpu = job_durations(settings)["idle"]
    assert runs == 2 and total >= 0.1 and cpu < 0.05  # waiting is wall time, not CPU
