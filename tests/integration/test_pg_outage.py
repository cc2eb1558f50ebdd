"""PostgreSQL outages in the services profile: writers spool, drains are exactly-once.

Each test owns its PostgreSQL (`private_postgres`, tests/faults_pg.py): it stops the cluster in
the middle of writes to the event log, the prediction log and the offline minutes, starts it
again, and kills the process draining the spool (SIGKILL) at random points until it is empty:
every record is then in its store exactly once. The scheduler waits out an outage without
spending its retries.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from faults_pg import wait_until

from rtml.config import Settings
from rtml.spool import Spool, spool_stats, unreachable

# The flusher: drains every spool in small batches (many transactions to be killed between).
FLUSHER = """
import sys
import rtml.spool
from rtml.config import get_settings
from rtml.features.offline import PostgresMinutes, offline_spool
from rtml.monitoring.events import EventLog
from rtml.serving.prediction_log import PredictionStore

rtml.spool.DRAIN_BATCH = 7
settings = get_settings()
events, predictions, offline = EventLog(settings), PredictionStore(settings), PostgresMinutes(settings)
print("draining", flush=True)
events.flush()
predictions.settle()
offline_spool(settings).settle(offline.write_spooled)
print("drained", flush=True)
"""


def _minutes(start: int, n: int, revision: int = 0) -> pd.DataFrame:
    minute = pd.date_range(pd.Timestamp("2026-01-01", tz="UTC") + pd.Timedelta(minutes=start), periods=n, freq="min")
    return pd.DataFrame(
        {
            "minute": minute,
            "tx_count": range(start, start + n),
            "fee_total_sat": [1000 * (i + 1) for i in range(start, start + n)],
            "fee_avg_sat": [1000.0 * (i + 1) / max(i, 1) for i in range(start, start + n)],
            "event_time": minute + pd.Timedelta(minutes=1),
            "revision": revision,
        }
    )


def _records(start: int, n: int, kind: str) -> list:
    from rtml.serving.prediction_log import PredictionRecord

    return [
        PredictionRecord(1_700_000_000_000 + i, "1", i * 60_000, i * 60_000, 1.0, 2.0, 3.0, 0.5, kind)
        for i in range(start, start + n)
    ]


def _flush_under_fire(settings: Settings, kills: int = 3) -> list[int]:
    """Run the flusher `kills` times, each SIGKILLed at a random moment after it started
    draining, then once to the end; returns the records left spooled after each kill."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    rng = random.Random()
    left = []
    for attempt in range(kills + 1):
        proc = subprocess.Popen([sys.executable, "-c", FLUSHER], stdout=subprocess.PIPE, env=env, text=True)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "draining"
        if attempt < kills:  # once a batch or more went (mid-flush), at a random moment after
            before = sum(s["records"] for s in spool_stats(settings).values())
            wait_until(
                lambda b=before, p=proc: p.poll() is not None or sum(s["records"] for s in spool_stats(settings).values()) < b,
                30, "the flusher drains", every=0.005,
            )  # fmt: skip
            time.sleep(rng.uniform(0.0, 0.05))  # the kill's moment is the fault, not a synchronisation
            proc.send_signal(signal.SIGKILL)
        out = proc.stdout.read()
        proc.wait(60)
        if attempt < kills:
            left.append(sum(s["records"] for s in spool_stats(settings).values()))
        else:
            assert "drained" in out
    return left


def test_outage_spools_then_drains_exactly_once(private_postgres: tuple[Settings, object]) -> None:
    from rtml.features.offline import PostgresMinutes, offline_spool, to_source_frame
    from rtml.features.online import OnlineMinutes
    from rtml.features.writer import FeatureStoreSink
    from rtml.monitoring.events import EventLog
    from rtml.serving.prediction_log import PredictionStore, read_judged

    settings, pg = private_postgres
    clock = time.monotonic()
    events, predictions, sink = EventLog(settings), PredictionStore(settings), FeatureStoreSink(settings)
    # Before: PostgreSQL answers.
    for i in range(50):
        events.record("test.before", key=f"k{i}" if i % 2 else None, i=i)
    predictions.write(_records(0, 50, "pipeline") + _records(0, 50, "online"), {})
    sink.write_frame(_minutes(0, 30))

    reader = OnlineMinutes(settings, sink.store)  # as serving's, opened before the outage
    print(f"before: {time.monotonic() - clock:.1f} s")
    pg.stop()  # type: ignore[attr-defined]
    for i in range(300):  # every write returns: nothing raises, nothing blocks
        events.record("test.during", key=f"d{i}" if i % 2 else None, i=i)
    predictions.write(_records(50, 150, "pipeline") + _records(50, 150, "online"), {})
    for start in range(30, 90, 10):
        sink.write_frame(_minutes(start, 10))
    sink.write_frame(_minutes(85, 5, revision=1))  # a newer revision of spooled minutes
    print(f"during: {time.monotonic() - clock:.1f} s")
    # Serving stays fresh: the online window got the spooled minutes, the newest revision too.
    keys, *_, revisions = reader.window()
    assert keys[-1] == int(pd.Timestamp("2026-01-01 01:29", tz="UTC").timestamp()) and revisions[-1] == 1
    stats = spool_stats(settings)
    assert stats["events"]["records"] == 300 and stats["predictions"]["records"] == 300
    assert stats["offline_minutes"]["records"] == 60
    with pytest.raises(Exception) as refused:  # monitoring does not judge while forecasts are spooled
        read_judged(settings, 0, 10**12)
    assert unreachable(refused.value)  # what the scheduler waits out

    pg.start()  # type: ignore[attr-defined]
    # A crash after a write reached PostgreSQL, before the spool forgot it: written again below.
    offline = PostgresMinutes(settings)
    offline.write_spooled(offline_spool(settings).records()[:20])
    predictions._write_pg(predictions.spool.records()[:40])
    left = _flush_under_fire(settings)
    print(f"records left spooled after each SIGKILL of the flusher: {left}")

    assert all(s["records"] == 0 and s["dropped"] == 0 for s in spool_stats(settings).values())
    assert events.count("test.before") == 50 and events.count("test.during") == 300
    details = [e.details["i"] for e in events.recent(limit=1000, prefix="test.during")]
    assert sorted(details) == list(range(300))
    assert predictions.count("pipeline") == 200 and predictions.count("online") == 200
    assert len(read_judged(settings, 0, 10**12)) == 200
    assert offline.count() == (90, 90)
    stored = offline.read()
    expected = to_source_frame(pd.concat([_minutes(0, 85), _minutes(85, 5, revision=1)]))
    assert stored["revision"].tolist() == expected["revision"].tolist()
    assert stored["tx_count"].tolist() == expected["tx_count"].tolist()
    for store in (events, predictions, sink, offline):
        store.close()


def test_scheduler_waits_for_postgres(private_postgres: tuple[Settings, object], write_engine_minutes) -> None:  # type: ignore[no-untyped-def]
    """A job that cannot reach PostgreSQL waits for it: no attempt spent, no boundary skipped."""
    from rtml.model.registry import registry_exists
    from rtml.monitoring.events import EventLog
    from rtml.ops.scheduler import Job, Scheduler

    settings, pg = private_postgres
    write_engine_minutes(settings, _minutes(0, 3))
    runs: list[int] = []

    def job(t_ms: int) -> None:
        registry_exists(settings)  # a registry read: connects to PostgreSQL
        runs.append(t_ms)

    scheduler = Scheduler(settings, [Job("probe", job, every_ms=60_000)])
    pg.stop()  # type: ignore[attr-defined]
    threading.Timer(4.0, pg.start).start()  # type: ignore[attr-defined]  # the outage's length is the fault
    assert scheduler.catch_up() == 3
    scheduler.close()
    assert len(runs) == 3 and runs == sorted(set(runs))
    events = EventLog(settings)
    assert events.count("scheduler.job_failed") == 0
    assert events.count("scheduler.job_waiting") == 1  # spooled while down, drained after
    events.close()


def test_spool_bound_and_retention(settings: Settings) -> None:
    settings.spool.max_records = 5
    settings.spool.max_age_s = 60
    spool = Spool(settings, "events")
    assert spool.put([(f"k{i}", str(i)) for i in range(4)], now_ms=0) == 0
    assert spool.put([("k1", "again")], now_ms=1000) == 0  # a key spooled again is replaced, at the end
    assert spool.put([(f"n{i}", str(i)) for i in range(3)], now_ms=2000) == 2  # the two oldest go
    assert [k for k, _ in spool.records()] == ["k3", "k1", "n0", "n1", "n2"]
    assert spool.put([("late", "x")], now_ms=61_500) == 2  # k3 (0 s) and k1 (1 s) expired at 60 s
    assert [k for k, _ in spool.records()] == ["n0", "n1", "n2", "late"]
    assert spool.dropped() == 4
    written: list[str] = []
    assert spool.drain(lambda batch: written.extend(k for k, _ in batch)) == 0  # now: all expired
    assert written == [] and not spool.pending() and spool.dropped() == 8
    spool.close()


def test_registry_and_serving_ride_out_outages(
    private_postgres: tuple[Settings, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """1. The scheduled bootstrap registers its baseline, then PostgreSQL goes away before the
    promotion: the job waits, and its retry promotes that same version (one version, one of
    each event), with no `scheduler.job_failed`.
    2. GET /forecast during an outage: the cached champion and the online features (Redis)
    answer, the forecasts are spooled, and each reaches the log once PostgreSQL is back."""
    from fastapi.testclient import TestClient

    from rtml.model import registry
    from rtml.model.train import bootstrap_champion
    from rtml.monitoring.events import EventLog
    from rtml.ops.scheduler import Job, Scheduler
    from rtml.serving.app import create_app
    from rtml.serving.prediction_log import PredictionStore
    from rtml.serving.seed import synthetic_minutes, write_minutes

    settings, pg = private_postgres
    rows = synthetic_minutes(settings, 120)
    write_minutes(settings, rows)
    end = rows[-1].event_time
    original = registry.log_candidate
    outage: list[threading.Timer] = []

    def log_then_fail(*args, **kwargs):  # type: ignore[no-untyped-def]
        version = original(*args, **kwargs)
        if not outage:  # the first registration reached the registry; now it goes away for 3 s
            pg.stop()  # type: ignore[attr-defined]
            outage.append(threading.Timer(3.0, pg.start))  # type: ignore[attr-defined]
            outage[0].start()
        return version

    monkeypatch.setattr(registry, "log_candidate", log_then_fail)
    scheduler = Scheduler(settings, [Job("baseline", lambda t: bootstrap_champion(settings, end), after_minutes=1)])
    scheduler.fire(int(end.timestamp() * 1000), scheduler.jobs[0])
    scheduler.close()
    assert outage, "the fault was injected"
    assert [v["version"] for v in registry.list_versions(settings)] == ["1"]
    assert registry.champion_version(settings) == "1"
    events = EventLog(settings)
    counts = {k: events.count(k) for k in ("model.baseline", "model.promoted", "scheduler.job_waiting", "scheduler.job_failed")}
    events.close()
    assert counts == {"model.baseline": 1, "model.promoted": 1, "scheduler.job_waiting": 1, "scheduler.job_failed": 0}

    with TestClient(create_app(settings), base_url="http://localhost") as client:
        assert client.get("/forecast").json()["model_version"] == "1"
        state = client.app.state.serving  # type: ignore[attr-defined]
        state.log.flush()
        pg.stop()  # type: ignore[attr-defined]
        wait_until(lambda: registry.champion_version(settings) is None, 30, "the registry is unreachable")
        for _ in range(5):  # the watcher polls the registry meanwhile, every second
            response = client.get("/forecast")
            assert response.status_code == 200, response.text
            assert response.json()["model_version"] == "1"
        state.log.flush()
        assert spool_stats(settings)["predictions"]["records"] == 5
        pg.start()  # type: ignore[attr-defined]
        assert client.get("/forecast").status_code == 200  # its write drains the spool first
        state.log.flush()
    assert spool_stats(settings)["predictions"]["records"] == 0
    store = PredictionStore(settings)
    assert store.count("online") == 7
    store.close()
