"""PostgreSQL outages: what a write costs while PostgreSQL is down (it spools), and how fast the
spool drains once it is back.

The outage is a DSN on a closed local port (connection refused, as a stopped server answers);
the drain goes to the machine's PostgreSQL, in a namespace of its own that is purged after.
Per store: N records written during the outage (events one by one, forecasts in batches of 20
as the prediction log's writer thread does), then the drain into PostgreSQL.

    .venv/bin/python bench/pg_spool.py [--records 5000]
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import time


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=5000)
    n = parser.parse_args().records
    os.environ["RTML_DATA_DIR"] = tempfile.mkdtemp(prefix="rtml-bench-spool-")
    os.environ["RTML_PROFILE"] = "services"
    from rtml.config import get_settings
    from rtml.monitoring.events import EventLog
    from rtml.ops.purge import execute_purge, plan_purge
    from rtml.serving.prediction_log import PredictionRecord, PredictionStore

    up = get_settings()
    up.root  # noqa: B018 - the data directory records the PostgreSQL that answers
    down = up.model_copy(update={"postgres_dsn": f"postgresql://postgres@127.0.0.1:{closed_port()}/test"})
    records = [PredictionRecord(i, "1", i * 60_000, i * 60_000, 1.0, 2.0, 3.0, 0.5, "online") for i in range(n)]
    try:
        events = EventLog(down)
        started = time.perf_counter()
        for i in range(n):
            events.record("bench.outage", i=i)
        spooled_events = time.perf_counter() - started
        events.close()
        store = PredictionStore(down)
        started = time.perf_counter()
        for i in range(0, n, 20):
            store.write(records[i : i + 20], {})
        spooled_forecasts = time.perf_counter() - started
        store.close()

        events = EventLog(up)
        started = time.perf_counter()
        drained_events = events.flush()
        drain_events = time.perf_counter() - started
        assert drained_events == n and events.count("bench.outage") == n
        events.close()
        store = PredictionStore(up)
        started = time.perf_counter()
        store.settle()
        drain_forecasts = time.perf_counter() - started
        assert store.count("online") == n
        store.close()
    finally:
        execute_purge(up, plan_purge(up, services=True))
    print(f"{n} records per store, PostgreSQL down (connection refused), then back")
    print(f"event while down:           {spooled_events / n * 1e3:.2f} ms per record() (spooled)")
    print(f"forecast batch while down:  {spooled_forecasts / (n / 20) * 1e3:.2f} ms per batch of 20 (spooled)")
    print(f"events drained:             {n / drain_events:,.0f} /s")
    print(f"forecasts drained:          {n / drain_forecasts:,.0f} /s")


if __name__ == "__main__":
    main()
