"""The scheduler on the event-time clock: no future data reaches a job, and every due boundary
fires exactly once across SIGKILLs in the middle of a clock jump.

The stores are filled the way the engine fills them (its minutes table and the feature store,
through their own sinks), so the clock jumps by hours at once, as in a `--speed max` replay.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from rtml.aggregate.clock import pipeline_clock
from rtml.config import Settings
from rtml.contracts import datetime_to_ms
from rtml.features.writer import FeatureStoreSink
from rtml.model import registry
from rtml.monitoring.evaluate import QualityStore
from rtml.monitoring.events import EventLog
from rtml.monitoring.scenario import swinging_fee_minutes
from rtml.ops.scheduler import scheduler_state
from rtml.serving.prediction_log import PIPELINE_KIND, PredictionStore

START = pd.Timestamp("2024-10-01T00:00:00Z")
HOUR_MS, MINUTE_MS = 3_600_000, 60_000


def fill_stores(settings: Settings, minutes: pd.DataFrame, write_engine_minutes: Callable[[Settings, Any], None]) -> None:
    """What the engine's sinks do with closed minutes: its own table, then the feature store."""
    write_engine_minutes(settings, minutes)
    sink = FeatureStoreSink(settings)
    sink.write_frame(minutes)
    sink.close()


def spy(monkeypatch: pytest.MonkeyPatch, module: Any, name: str, calls: list[tuple[Any, ...]]) -> None:
    """Record the arguments and the result of every call of `module.name` (which still runs)."""
    real: Callable[..., Any] = getattr(module, name)

    def recording(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        calls.append((args[1:], kwargs, result))
        return result

    monkeypatch.setattr(module, name, recording)


def test_no_job_reads_a_minute_at_or_after_its_clock(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, write_engine_minutes: Callable[[Settings, Any], None]
) -> None:
    from rtml.features import etl, offline
    from rtml.monitoring.loop import retrain
    from rtml.quality import sources
    from rtml.quality.drift import run_drift_check, scheduled_windows

    # Ten hours in the stores; jobs fire at t = 7 h, with three hours of "future" there to leak.
    fill_stores(settings, swinging_fee_minutes(START, 6, 4), write_engine_minutes)
    t = (START + pd.Timedelta(hours=7)).to_pydatetime()
    reads: list[tuple[Any, ...]] = []
    datasets: list[tuple[Any, ...]] = []
    spy(monkeypatch, offline, "read_minutes_df", reads)
    spy(monkeypatch, etl, "build_dataset", datasets)

    log = EventLog(settings)
    outcome = retrain(settings, log, "test", {}, t)
    log.close()
    assert outcome is not None
    assert pd.Timestamp(outcome["train_end"]) <= t  # the last label minute ends by t
    version = {v["version"]: v for v in registry.list_versions(settings)}[outcome["version"]]
    assert pd.Timestamp(version["train_end"]) <= t
    assert reads and datasets
    for (args, kwargs, frame) in reads:
        end = kwargs.get("end", args[1] if len(args) > 1 else None)
        assert end is not None and pd.Timestamp(end) <= t, (args, kwargs)
        assert frame.empty or frame["minute"].max() < t
    for (args, _, card) in datasets:
        assert pd.Timestamp(args[1]) + pd.Timedelta(minutes=settings.model.horizon_min) <= t
        rows = pd.read_parquet(card["path"])
        assert rows["target_minute"].max() < t and rows["asof"].max() <= t

    windows: list[tuple[Any, ...]] = []
    spy(monkeypatch, sources, "read_minutes", windows)
    reference, current = scheduled_windows(settings, t, START.to_pydatetime())
    result = run_drift_check(settings, reference, current, now=t, transactions=False, key="test")
    assert result.current is not None and result.current.end == t and not result.skipped
    assert windows
    for (args, _, frame) in windows:
        assert pd.Timestamp(args[1]) <= t, args
        assert frame is None or frame["minute"].max() < t


def fired_total(settings: Settings) -> int:
    path = settings.root / "scheduler.sqlite"
    if not path.exists():
        return 0
    db = sqlite3.connect(path, timeout=30)
    try:
        row = db.execute("SELECT sum(fired) FROM jobs").fetchone()
    except sqlite3.OperationalError:
        return 0
    finally:
        db.close()
    return int(row[0] or 0)


def training_in_flight(settings: Settings) -> bool:
    """The first training started and not gated yet."""
    log = EventLog(settings)
    try:
        started = log.recent(limit=1, prefix="retrain.started")
        return bool(started) and not log.recent(limit=1, prefix="model.gate", after_id=started[-1].id)
    finally:
        log.close()


@pytest.fixture
def scheduler_process(settings: Settings, tmp_path: Path) -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        log = open(tmp_path / "scheduler.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen([sys.executable, "-m", "rtml", "scheduler"], stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
        log.close()
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_sigkill_mid_jump_then_restart_fires_every_boundary_once(
    settings: Settings,
    scheduler_process: Callable[[], subprocess.Popen[bytes]],
    write_engine_minutes: Callable[[Settings, Any], None],
) -> None:
    hours = 8
    fill_stores(settings, swinging_fee_minutes(START, 6, hours - 6), write_engine_minutes)
    clock = pipeline_clock(settings)
    assert clock == (START + pd.Timedelta(hours=hours)).to_pydatetime()
    clock_ms, start_ms = datetime_to_ms(clock), datetime_to_ms(START.to_pydatetime())
    minutes = (clock_ms - start_ms) // MINUTE_MS
    total = 1 + 1 + minutes + hours + minutes  # baseline, first training, forecasts, drift, monitor
    rnd = random.Random()
    early, late = rnd.randint(5, 300), rnd.randint(750, total - 20)
    print(f"kills after {early} boundaries, in the first training, after {late} of {total}")
    kills: list[Callable[[], bool]] = [
        lambda: fired_total(settings) >= early,
        lambda: training_in_flight(settings),
        lambda: fired_total(settings) >= late,
    ]
    for condition in kills:
        proc = scheduler_process()
        wait_until(lambda c=condition, p=proc: c() or p.poll() is not None, "a moment to kill the scheduler")  # type: ignore[misc]
        assert proc.poll() is None, "the scheduler ended by itself"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    proc = scheduler_process()
    wait_until(lambda: scheduler_state(settings)[1] == clock_ms, "the scheduler to catch up with the clock")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0

    jobs, _ = scheduler_state(settings)
    baseline_at = start_ms + settings.model.min_baseline_minutes * MINUTE_MS
    assert jobs["baseline"] == (baseline_at, 1)
    assert jobs["first_training"] == (start_ms + settings.model.min_train_minutes * MINUTE_MS, 1)
    assert jobs["forecast"] == (clock_ms, minutes) and jobs["monitor"] == (clock_ms, minutes)
    assert jobs["drift"] == (clock_ms, hours)

    # Effects: one of each per boundary, none missing.
    store = PredictionStore(settings)
    records = store.read_targets((PIPELINE_KIND,), 0, 1 << 62)
    store.close()
    assert sorted(r.feature_time_ms for r in records) == list(range(baseline_at, clock_ms + 1, MINUTE_MS))
    log = EventLog(settings)
    events = log.recent(limit=100_000)
    log.close()
    kinds = [e.kind for e in events]
    assert "scheduler.job_failed" not in kinds
    assert sum(k.startswith("drift.") for k in kinds) == hours
    assert sum(k.startswith("quality.") for k in kinds) == hours
    assert kinds.count("model.baseline") == 1
    assert kinds.count("retrain.started") == kinds.count("model.gate") >= 1  # each training gated once
    quality = QualityStore(settings)
    verdicts = quality.hours(limit=100)
    quality.close()
    first_hour = -(-baseline_at // HOUR_MS) * HOUR_MS
    assert [datetime_to_ms(v.hour) for v in verdicts] == list(range(first_hour, clock_ms, HOUR_MS))
    breaches = [e.details["hour_ms"] for e in events if e.kind == "monitor.breach"]
    assert sorted(breaches) == [datetime_to_ms(v.hour) for v in verdicts if v.breach]
