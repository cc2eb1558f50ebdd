"""Live-mode freshness: from the watermark passing a window's end to the row being readable.

A live aggregator runs in its own process (as `rtml aggregate` does) while this script
appends events one by one to the embedded stream, with event time running 60x faster than
the wall clock so a window closes every second. For each window it notes the wall time the
event that moved the watermark past the window's end was committed to the stream, and polls
the minutes table (every ~1 ms) for the time the row became readable.

Run: .venv/bin/python bench/aggregate_freshness.py [--seconds 60] [--sinks engine|all]
  --sinks engine: the engine's own minutes table only (default); all: every configured sink
  (the feature store too), delivered after the minutes table in the same loop.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import time

from rtml.aggregate.sinks import aggregate_db_path
from rtml.config import get_settings
from rtml.contracts import MINUTE_MS
from rtml.stream import open_stream

ENGINE = """
import signal, threading
from rtml.aggregate.embedded import Engine
from rtml.aggregate.sinks import MinutesTable, aggregate_db_path
from rtml.config import get_settings
from rtml.pipeline import minute_sinks
settings = get_settings()
own = [MinutesTable(aggregate_db_path(settings))]
sinks = own if sys.argv[1] == "engine" else minute_sinks(settings, live=True)  # as `rtml aggregate`
engine = Engine(settings, sinks=sinks)
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
engine.run_live(stop)
engine.close()
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--sinks", choices=("engine", "all"), default="engine")
    parser.add_argument("--rate", type=float, default=200, help="events appended per wall second")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["RTML_DATA_DIR"] = tmp
        os.environ["RTML_PROFILE"] = "embedded"
        settings = get_settings()
        lateness = int(settings.window.allowed_lateness_s * 1000)
        stream = open_stream(settings)
        proc = subprocess.Popen([sys.executable, "-c", "import sys\n" + ENGINE, args.sinks])
        db = aggregate_db_path(settings)
        try:
            step_ms = int(60 * 1000 / args.rate)  # event time advances 60 s per wall second
            et = 1_700_000_000_000 - 1_700_000_000_000 % MINUTE_MS
            crossed: dict[int, float] = {}  # window start -> wall time the watermark passed its end
            seen: dict[int, float] = {}
            conn: sqlite3.Connection | None = None
            i = 0
            start = time.perf_counter()
            next_append = start
            while time.perf_counter() - start < args.seconds:
                now = time.perf_counter()
                if now >= next_append:
                    before = et - lateness
                    et += step_ms
                    stream.append_rows([(f"{i:064x}", et, 1000 + i % 700, 250, "bench", et)])
                    done = time.perf_counter()
                    wm = et - lateness
                    end = before - before % MINUTE_MS + MINUTE_MS
                    while end <= wm:
                        crossed[end - MINUTE_MS] = done
                        end += MINUTE_MS
                    i += 1
                    next_append += 1 / args.rate
                if conn is None and db.exists():
                    conn = sqlite3.connect(db)
                if conn is not None:
                    try:
                        rows = conn.execute(
                            "SELECT minute FROM minutes WHERE minute > ?", (max(seen, default=0),)
                        ).fetchall()
                    except sqlite3.OperationalError:  # the engine has not created the table yet
                        rows = []
                    t = time.perf_counter()
                    for (minute,) in rows:
                        seen.setdefault(minute, t)
                time.sleep(0.0005)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
            stream.close()
        # Skip the first windows: they close while the engine process is still starting.
        lags = sorted((seen[m] - crossed[m]) * 1000 for m in sorted(crossed)[5:] if m in seen)
        missing = sum(1 for m in sorted(crossed)[5:] if m not in seen)
        if not lags:
            raise SystemExit("no window was observed")

        def pct(q: float) -> float:
            return lags[min(len(lags) - 1, int(q * len(lags)))]

        print(
            f"windows measured           {len(lags)} ({missing} not yet readable at the end), sinks: {args.sinks}"
        )
        print(f"freshness p50              {pct(0.50):.1f} ms")
        print(f"freshness p99              {pct(0.99):.1f} ms")
        print(f"freshness max              {lags[-1]:.1f} ms")


if __name__ == "__main__":
    main()
