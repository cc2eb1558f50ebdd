"""Backfill throughput through stream + engine (embedded profile), and the ratio to pandas.

Fills a fresh SQLite stream with synthetic events (calibrated generator, 10 tx/s), then times
`Engine.drain()` from an empty state: batch reads from the log, the window semantics, one
state transaction per batch, delivery to the minutes table. The pandas reference computes the
same minutes from the same stream file (read_sql + drop_duplicates + groupby), checked equal.

Run: .venv/bin/python bench/aggregate_throughput.py [--events 1000000] [--backend embedded|services]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import time
from datetime import UTC, datetime

from rtml.aggregate.embedded import Engine
from rtml.aggregate.reference import reference_minutes
from rtml.aggregate.sinks import MinutesTable, aggregate_db_path, read_minutes
from rtml.config import get_settings
from rtml.contracts import MINUTE_MS, MinuteFeatures
from rtml.sources.synthetic import SyntheticConfig, SyntheticSource
from rtml.stream import open_stream, stream_path


def pandas_minutes(path: str) -> list[MinuteFeatures]:
    """The pandas reference reading the same stream file."""
    import pandas as pd

    conn = sqlite3.connect(path)
    frame = pd.read_sql_query("SELECT tx_hash, event_time, fee_sat FROM events ORDER BY offset", conn)
    conn.close()
    return _frame_minutes(frame)


def _frame_minutes(frame: object) -> list[MinuteFeatures]:
    import pandas as pd

    assert isinstance(frame, pd.DataFrame)
    frame = frame.drop_duplicates("tx_hash")
    minute = frame["event_time"] - frame["event_time"] % MINUTE_MS
    grouped = frame.groupby(minute)["fee_sat"].agg(["count", "sum"])
    full = range(int(grouped.index.min()), int(grouped.index.max()) + MINUTE_MS, MINUTE_MS)
    grouped = grouped.reindex(full, fill_value=0)
    return [
        MinuteFeatures.from_window(int(m), int(c), int(s), 1)
        for m, c, s in zip(grouped.index, grouped["count"], grouped["sum"], strict=True)
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--backend", choices=("embedded", "services"), default="embedded")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["RTML_DATA_DIR"] = tmp
        os.environ["RTML_PROFILE"] = args.backend
        settings = get_settings()
        minutes = args.events // 400 + 1  # the hourly rhythm averages below 600 a minute
        source = SyntheticSource(
            SyntheticConfig(seed=3, start=datetime(2024, 5, 1, tzinfo=UTC), minutes=minutes, rate_per_min=600)
        )
        rows = [(e.tx_hash, e.event_time, e.fee_sat, e.size, e.source, e.ingest_time) for e in source]
        rows = rows[: args.events]
        with open_stream(settings) as stream:
            t = time.perf_counter()
            for i in range(0, len(rows), 50_000):
                stream.append_rows(rows[i : i + 50_000])
            append_s = time.perf_counter() - t
        # The engine's own output table only: downstream sinks (the feature store) are timed by theirs.
        engine = Engine(settings, sinks=[MinutesTable(aggregate_db_path(settings))])
        t = time.perf_counter()
        emitted = engine.drain()
        engine_s = time.perf_counter() - t
        engine.close()
        got = read_minutes(settings)
        print(f"events                     {len(rows):,} over {emitted:,} minutes ({args.backend} stream)")
        print(
            f"stream append              {len(rows) / append_s:,.0f} events/s ({append_s:.2f} s, batches of 50k)"
        )
        print(f"stream + engine (drain)    {len(rows) / engine_s:,.0f} events/s ({engine_s:.2f} s)")
        if args.backend == "embedded":
            t = time.perf_counter()
            expected = pandas_minutes(stream_path(settings))
            pandas_s = time.perf_counter() - t
            assert got == expected, "engine output differs from the pandas reference"
            print(
                f"pandas reference           {len(rows) / pandas_s:,.0f} events/s ({pandas_s:.2f} s, same file)"
            )
            print(f"engine / pandas            {pandas_s / engine_s:.2f}x the pandas speed (outputs equal)")
        else:
            assert got == reference_minutes(rows)
            print("outputs equal the pandas reference")
            import redis

            r = redis.Redis.from_url(settings.redis_url)
            r.delete(*r.scan_iter(f"{settings.namespace}:*"))


if __name__ == "__main__":
    main()
