"""The pipeline's forecaster: cost per closed minute, and "minute closed -> forecast logged" live.

1. Cost: 36 h of minutes in the real stores (the engine's table and the feature store), then the
   forecast job at every minute boundary of the jump, as the scheduler fires it after a
   `--speed max` replay: per-boundary milliseconds with the bootstrap baseline champion and with
   a trained LightGBM champion.
2. Live: `rtml up --source replay --speed 60` (a minute closes every second, through the live
   engine and the scheduler's poll); this process watches the engine's minutes table every
   few milliseconds and reports, per minute, the wall time from its appearance to the logged
   pipeline forecast whose feature time is that minute's end (p50/p99).

    .venv/bin/python bench/forecaster.py [--profile embedded|services] [--live-minutes 150]
"""

from __future__ import annotations

import argparse
import logging
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def fresh(profile: str, prefix: str) -> None:
    os.environ["RTML_DATA_DIR"] = tempfile.mkdtemp(prefix=prefix)
    os.environ["RTML_PROFILE"] = profile
    # The machine's Redis runs without AOF: a benchmark may use it (`rtml up` refuses it otherwise).
    os.environ.setdefault("RTML_STREAM__ALLOW_VOLATILE_REDIS", "true")


def cost(profile: str) -> None:
    import pandas as pd

    from rtml.aggregate.sinks import MinutesTable, aggregate_db_path
    from rtml.config import get_settings
    from rtml.contracts import MinuteFeatures
    from rtml.features.writer import FeatureStoreSink
    from rtml.model import registry
    from rtml.model.train import bootstrap_champion, train
    from rtml.monitoring.scenario import swinging_fee_minutes
    from rtml.ops.purge import execute_purge, plan_purge
    from rtml.serving.forecaster import Forecaster

    fresh(profile, "rtml-bench-forecaster-")
    settings = get_settings()
    start = pd.Timestamp("2024-10-01T00:00:00Z")
    minutes = swinging_fee_minutes(start, 30, 6)
    table = MinutesTable(aggregate_db_path(settings))
    table.upsert([
        MinuteFeatures(r.minute.to_pydatetime(), int(r.tx_count), int(r.fee_total_sat), float(r.fee_avg_sat),
                       r.event_time.to_pydatetime(), int(r.revision))
        for r in minutes.itertuples(index=False)
    ])  # fmt: skip
    table.close()
    sink = FeatureStoreSink(settings)
    sink.write_frame(minutes)
    sink.close()
    end = minutes["minute"].max() + pd.Timedelta(minutes=1)
    bootstrap_champion(settings, (start + pd.Timedelta(hours=1)).to_pydatetime())
    first = int((start + pd.Timedelta(hours=1)).timestamp() * 1000)
    boundaries = list(range(first, int(end.timestamp() * 1000) + 1, 60_000))
    try:
        for label in ("baseline champion", "LightGBM champion"):
            if label.startswith("LightGBM"):
                result = train(settings, end=end.to_pydatetime())
                registry.promote(settings, result.version, reason="bench")
            forecaster = Forecaster(settings)
            forecaster.champion()  # load it once, as the scheduler has before a jump
            times = []
            for t in boundaries:
                started = time.perf_counter()
                forecaster.forecast_at(t)
                times.append((time.perf_counter() - started) * 1000)
            forecaster.close()
            a = np.array(times)
            print(
                f"  {label:<18} {len(a):,} boundaries: mean {a.mean():.2f} ms, p50 {np.percentile(a, 50):.2f} ms, "
                f"p99 {np.percentile(a, 99):.2f} ms per closed minute ({a.sum() / 1000:.1f} s for the 35 h jump)"
            )
            # the second pass logs nothing new (one forecast per target minute): start clean
            if profile == "embedded":
                db = sqlite3.connect(settings.path("predictions.sqlite"))
                db.execute("DELETE FROM predictions")
                db.commit()
                db.close()
            else:
                import psycopg

                with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
                    conn.execute(f'DELETE FROM "{settings.namespace}".predictions')
    finally:
        if profile == "services":
            execute_purge(settings, plan_purge(settings, services=True))


def live(profile: str, live_minutes: int) -> None:
    from rtml.aggregate.sinks import aggregate_db_path
    from rtml.config import get_settings
    from rtml.demo import Story, free_port, write_wire_file
    from rtml.ops.purge import execute_purge, plan_purge
    from rtml.serving.prediction_log import PIPELINE_KIND, PredictionStore

    fresh(profile, "rtml-bench-forecaster-live-")
    os.environ["RTML_MODEL__MIN_BASELINE_MINUTES"] = "45"  # more live minutes with a champion
    settings = get_settings()
    wire = Path(tempfile.mkdtemp(prefix="rtml-bench-wire-")) / "wire.jsonl.gz"
    write_wire_file(Story.build(live_minutes / 60, seed=7), wire)
    cmd = [sys.executable, "-m", "rtml", "up", "--source", "replay", "--file", str(wire), "--speed", "60",
           "--port", str(free_port())]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, env=os.environ.copy())
    seen: dict[int, float] = {}
    path = aggregate_db_path(settings)
    deadline = time.time() + live_minutes * 1.0 + 120
    try:
        db = sqlite3.connect(path, timeout=30)
        last = 0
        while time.time() < deadline and len(seen) < live_minutes - 2:
            try:
                rows = db.execute("SELECT minute FROM minutes WHERE minute > ? ORDER BY minute", (last,)).fetchall()
            except sqlite3.OperationalError:
                rows = []
            now = time.time()
            for (minute,) in rows:
                seen[int(minute)] = now
                last = max(last, int(minute))
            time.sleep(0.003)
        db.close()
        time.sleep(2)
        store = PredictionStore(settings)
        records = store.read_targets((PIPELINE_KIND,), 0, 1 << 62)
        store.close()
    finally:
        subprocess.run([sys.executable, "-m", "rtml", "down"], check=True, capture_output=True, env=os.environ.copy())
        if profile == "services":
            execute_purge(settings, plan_purge(settings, services=True))
    latencies = [
        r.logged_ms - seen[r.feature_time_ms - 60_000] * 1000 for r in records if r.feature_time_ms - 60_000 in seen
    ]
    lat = np.array(latencies[1:])  # the first waits for the champion's load
    print(
        f"  live (--speed 60, scheduler.poll_s {settings.scheduler.poll_s:g} s): {len(lat)} minutes, "
        f"minute closed -> forecast logged p50 {np.percentile(lat, 50):.0f} ms, p99 {np.percentile(lat, 99):.0f} ms, "
        f"max {lat.max():.0f} ms (a minute that closed while a drift check or a training ran waits for it)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=("embedded", "services"), default="embedded")
    parser.add_argument("--live-minutes", type=int, default=150)
    parser.add_argument("--parts", default="cost,live")
    args = parser.parse_args()
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    os.environ["DO_NOT_TRACK"] = "1"
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    print(f"forecaster ({args.profile})")
    if "cost" in args.parts:
        cost(args.profile)
    if "live" in args.parts:
        live(args.profile, args.live_minutes)


if __name__ == "__main__":
    main()
