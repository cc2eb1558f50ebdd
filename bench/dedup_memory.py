"""Dedup memory over a long max-speed replay: `ingest.dedup_ttl_s` runs on the ingest event clock,
so a replay of many days holds one TTL of hashes at a time, as live does (issue 17).

Replays `--days` of calibrated synthetic traffic (~209,000 transactions a day) at max speed
through the real `Ingestor` (parse, dedup, stream append) on a fresh data directory and prints,
per simulated day, the entries the dedup index holds, this process's resident memory and the
wall time so far. Flat entries past the first TTL is the claim; on the services profile the
entries are Redis keys (`--profile services`, Redis from RTML_REDIS_URL).

    .venv/bin/python bench/dedup_memory.py [--days 10] [--profile embedded|services]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

DAY_MS = 86_400_000


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=float, default=10)
    parser.add_argument("--profile", choices=("embedded", "services"), default="embedded")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rtml-bench-dedup-") as tmp:
        os.environ["RTML_DATA_DIR"] = str(Path(tmp) / "data")
        os.environ["RTML_PROFILE"] = args.profile
        os.environ["RTML_CONFIG"] = str(Path(tmp) / "absent.toml")
        from rtml.config import get_settings
        from rtml.sources.ingest import Ingestor
        from rtml.sources.replay import paced_batches, synthetic_lines

        settings = get_settings()
        start = datetime(2024, 10, 1, tzinfo=UTC)
        lines = synthetic_lines(settings.seed, args.days * 86_400, start)
        t0, next_day = time.monotonic(), int(start.timestamp() * 1000) + DAY_MS
        print(f"dedup TTL {settings.ingest.dedup_ttl_s} s of event time, profile {args.profile}")
        print(f"{'day':>4} {'events':>10} {'dedup entries':>14} {'RSS MB':>8} {'wall s':>7}")
        with Ingestor(settings) as ingestor:
            for batch in paced_batches(lines, None, batch_size=5_000):
                ingestor.ingest(batch, "synthetic")
                clock = ingestor.clock.high
                if clock is not None and clock >= next_day:
                    day = (next_day - int(start.timestamp() * 1000)) // DAY_MS
                    print(f"{day:>4} {ingestor.totals.appended:>10,} {ingestor.dedup.size():>14,}"
                          f" {rss_mb():>8.0f} {time.monotonic() - t0:>7.0f}", flush=True)  # fmt: skip
                    next_day += DAY_MS
            if args.profile == "services":
                from rtml.ops.purge import execute_purge, plan_purge

                execute_purge(settings, plan_purge(settings, services=True))


if __name__ == "__main__":
    main()
