"""Time to train and backtest the fee forecaster on 30 days of minutes (issue 7: target < 60 s).

30 days of the calibrated synthetic source (about 6.3 M transactions) are aggregated per minute
(43,200 minutes), then `rtml.model.train.train` runs end to end in a fresh data directory:
ETL frame, 5-fold rolling-origin backtest of the model and the baselines, final fit, gate,
MLflow run + registered version. The timed figure excludes generating the transactions.

    .venv/bin/python bench/train_30d.py [--days 30]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from rtml.features.dataset import minutes_from_totals


def synthetic_minutes(days: float, seed: int) -> pd.DataFrame:
    from rtml.sources.synthetic import SyntheticConfig, SyntheticSource

    count: dict[int, int] = defaultdict(int)
    total: dict[int, int] = defaultdict(int)
    start = datetime(2024, 9, 1, tzinfo=UTC)
    for e in SyntheticSource(SyntheticConfig(seed=seed, start=start, minutes=int(days * 1440))).events():
        m = e.event_time - e.event_time % 60_000
        count[m] += 1
        total[m] += e.fee_sat
    ms = np.arange(min(count), max(count) + 60_000, 60_000)
    c = np.array([count.get(int(m), 0) for m in ms])
    f = np.array([total.get(int(m), 0) for m in ms])
    minute = pd.to_datetime(ms, unit="ms", utc=True)
    return minutes_from_totals(minute, c, f)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--days", type=float, default=30)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    t = time.perf_counter()
    minutes = synthetic_minutes(args.days, args.seed)
    print(
        f"generated {len(minutes):,} minutes ({int(minutes['tx_count'].sum()):,} tx) in {time.perf_counter() - t:.1f} s"
    )
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["RTML_DATA_DIR"] = str(Path(tmp) / "data")
        os.environ["RTML_PROFILE"] = "embedded"
        from rtml.config import get_settings
        from rtml.model import registry
        from rtml.model.train import train

        settings = get_settings()
        t = time.perf_counter()
        registry.experiment_id(settings)  # MLflow creates its tables once per data directory
        init = time.perf_counter() - t
        t, cpu = time.perf_counter(), time.process_time()
        result = train(settings, minutes=minutes)
        elapsed, cpu = time.perf_counter() - t, time.process_time() - cpu
    print(f"MLflow store creation (once per data dir): {init:.1f} s")
    print(
        f"train + {len(result.backtest.folds)}-fold backtest + gate + registry on {result.rows:,} rows: "
        f"{elapsed:.1f} s wall, {cpu:.1f} s CPU (target < 60 s; n_jobs={settings.model.n_jobs}, "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f})"
    )
    for name, m in sorted(result.backtest.summary.items(), key=lambda kv: kv[1].wql):
        print(f"  {name:24s} wQL {m.wql:.4f}  MAE(P50) {m.mae:8,.0f}  P10–P90 coverage {m.coverage:.1%}")
    print("  " + result.line())
    for reason in result.decision.reasons:
        print(f"  - {reason}")


if __name__ == "__main__":
    main()
