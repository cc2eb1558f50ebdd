"""Time to build a 30-day training set (43,200 minutes) from the feature store; target < 10 s.

    .venv/bin/python bench/features_dataset.py [--days 30] [--profiles embedded,services]

Loads the minutes through the writer (timed separately), then times `build_dataset`: Feast's
point-in-time historical retrieval over every minute of the span (DuckDB or PostgreSQL offline
store), the feature rows, the Parquet file and its data card. Services use the real
PostgreSQL and Redis in a throw-away namespace, removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import pandas as pd
from features_online import minutes  # the same synthetic minutes (bench/ is on sys.path)


def run(profile: str, days: int, root: Path) -> None:
    from rtml.config import get_settings
    from rtml.features.etl import build_dataset
    from rtml.features.writer import FeatureStoreSink

    settings = get_settings(data_dir=root / profile, profile=profile)
    data = minutes(days * 1440)
    sink = FeatureStoreSink(settings)
    try:
        t = time.perf_counter()
        sink.write_frame(data)
        load_s = time.perf_counter() - t
        start, end = data["minute"].iloc[0], data["minute"].iloc[-1] + pd.Timedelta(minutes=1)
        t = time.perf_counter()
        card = build_dataset(settings, start, end, store=sink.store)
        build_s = time.perf_counter() - t
        print(
            f"{profile:9s} {len(data):,} minutes: load through the writer {load_s:5.1f} s; "
            f"build_dataset {build_s:5.2f} s -> {card['rows']:,} rows x {len(card['feature_columns'])} features"
        )
    finally:
        sink.close()
        if profile == "services":  # what `rtml down --purge` deletes
            from rtml.ops.purge import execute_purge, plan_purge

            execute_purge(settings, plan_purge(settings, services=True))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--profiles", default="embedded,services")
    args = parser.parse_args()
    os.environ.setdefault("RTML_CONFIG", "/nonexistent/rtml.toml")
    print(f"training set build, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        for profile in args.profiles.split(","):
            run(profile, args.days, Path(tmp))


if __name__ == "__main__":
    main()
