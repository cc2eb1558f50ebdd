"""Embedded engine vs Spark engine, side by side on the same input (issue 11).

Figures per engine:
- throughput: `--drain` over the real replay (`utx-2020-11-24.jsonl.gz`, re-timed dense,
  bounded disorder, 5 % duplicates), repeated `--copies` times with fresh hashes; events
  per second of processing, the Spark session start shown apart;
- latency from write to sink: a live run while a writer appends events (event time running
  30x faster than the wall clock, lateness 5 s, so a window closes every 2 s); for each
  minute, the time from writing the event that moved the watermark past its end to the
  sink's upsert of that minute (p50 / p95 / max);
- peak memory: the largest RSS of the engine's process tree (Python driver + JVM + workers);
- and whether both engines' minutes are identical.

Each engine runs in a child process of its own (so RSS is its own), the writer here.

    .venv/bin/python bench/engines_compare.py [--copies 8] [--live-seconds 40]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from rtml.aggregate.sinks import MinuteSink

REPLAY = Path(os.environ.get("RTML_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
LIVE_LATENESS_S = 5
SPEEDUP = 30  # event time per wall time in the live phase
LIVE_RATE = 100  # events written per wall second in the live phase
SPARK_BATCH = 50_000  # rows per Spark micro-batch


# -- the engine side (child process) ---------------------------------------------------------
class TimedSink(MinuteSink):
    """Records when each minute reached the sink (wall clock), beside the engine's own table."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("CREATE TABLE IF NOT EXISTS sink_log (minute INTEGER PRIMARY KEY, at REAL)")

    def upsert(self, rows: Sequence[object]) -> None:
        from rtml.contracts import datetime_to_ms

        now = time.time()
        self.conn.executemany(
            "INSERT OR IGNORE INTO sink_log VALUES (?, ?)",
            [(datetime_to_ms(r.minute), now) for r in rows],  # type: ignore[attr-defined]
        )


def worker(engine: str, phase: str, out: Path) -> None:
    import signal

    from rtml.config import get_settings
    from rtml.pipeline import minute_sinks

    settings = get_settings()
    sinks = [*minute_sinks(settings), TimedSink(settings.path("bench_sink.sqlite"))]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    result: dict[str, object] = {}
    if engine == "embedded":
        from rtml.aggregate.embedded import Engine

        eng = Engine(settings, sinks=sinks)
        t0 = time.perf_counter()
        if phase == "drain":
            eng.drain()
        else:
            eng.run_live(stop)
        result["seconds"] = time.perf_counter() - t0
        eng.close()
    else:
        from rtml.aggregate.spark_job import run_spark, spark_session

        t0 = time.perf_counter()
        spark = spark_session()
        result["startup_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        ends: list[float] = []
        run_spark(
            settings,
            drain=phase == "drain",
            sinks=sinks,
            spark=spark,
            stop=stop,
            max_rows_per_batch=SPARK_BATCH,
            on_batch=lambda _b, _n: ends.append(time.perf_counter()),
        )
        result["seconds"] = time.perf_counter() - t1
        if phase == "drain":
            result["first_batch_s"] = ends[0] - t1
            result["batch_ends"] = [t - t1 for t in ends]  # type: ignore[assignment]
        spark.stop()
    out.write_text(json.dumps(result))


# -- the orchestrator --------------------------------------------------------------------------
def replay_rows(copies: int) -> list[tuple[str, int, int, int, str, int]]:
    """The real replay, re-timed dense and disordered, repeated with fresh hashes after itself."""
    from rtml.aggregate.reference import disorder, load_replay, retime_dense

    base = retime_dense(load_replay(REPLAY / "utx-2020-11-24.jsonl.gz"))
    span = base[-1][1] - base[0][1] + 60_000
    rows: list[tuple[str, int, int, int, str, int]] = []
    for c in range(copies):
        shifted = [(f"{c:02x}{r[0][2:]}", r[1] + c * span, *r[2:]) for r in base]
        delivered, _ = disorder(shifted, max_delay_ms=30_000, duplicate_share=0.05, seed=c)  # type: ignore[arg-type]
        rows += delivered
    return rows


def tree_rss(pid: int) -> int:
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def run_child(engine: str, phase: str, data_dir: Path, env: dict[str, str], during: object = None) -> dict[str, float]:
    """Run one engine phase in a child, sampling its process tree's RSS; `during(child)` drives it."""
    out = data_dir / f"result-{engine}-{phase}.json"
    env = {**os.environ, **env, "RTML_DATA_DIR": str(data_dir), "RTML_CONFIG": str(data_dir / "none.toml")}
    child = subprocess.Popen(
        [sys.executable, __file__, "--worker", engine, "--phase", phase, "--out", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss(child.pid))
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        if callable(during):
            during(child)
        child.wait(timeout=900)
    finally:
        done.set()
        sampler.join()
        if child.poll() is None:
            child.kill()
    if child.returncode != 0:
        raise SystemExit(f"{engine} {phase} failed with exit code {child.returncode}")
    result: dict[str, float] = json.loads(out.read_text())
    result["peak_rss_mb"] = peak / 2**20
    return result


def minutes_of(data_dir: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(data_dir / "aggregate.sqlite") as conn:
        return conn.execute("SELECT minute, tx_count, fee_total_sat, fee_avg_sat, event_time FROM minutes ORDER BY minute").fetchall()


def throughput(engine: str, rows: list[tuple[str, int, int, int, str, int]], root: Path) -> dict[str, float]:
    from rtml.config import get_settings
    from rtml.stream import open_stream

    data_dir = root / f"drain-{engine}"
    with open_stream(get_settings(data_dir=data_dir)) as stream:
        stream.append_rows(rows)
    result = run_child(engine, "drain", data_dir, {})
    result["events_per_s"] = len(rows) / result["seconds"]
    ends = result.pop("batch_ends", None)
    if isinstance(ends, list):
        # Steady state: the data batches after the first (which carries the JIT and worker start).
        last = -(-len(rows) // SPARK_BATCH) - 1
        if last > 0:
            result["steady_events_per_s"] = (len(rows) - SPARK_BATCH) / (ends[last] - ends[0])
    else:
        result["steady_events_per_s"] = result["events_per_s"]
    return result


def latency(engine: str, seconds: float, root: Path) -> dict[str, float]:
    """Live run with a paced writer; per-minute write-to-sink latency of the closing event."""
    from rtml.config import get_settings
    from rtml.stream import open_stream

    data_dir = root / f"live-{engine}"
    settings = get_settings(data_dir=data_dir)
    writes: list[tuple[int, float]] = []  # (event_time, wall time written)
    sink_db = data_dir / "bench_sink.sqlite"
    measure = {"from": 0.0}

    def drive(child: subprocess.Popen[bytes]) -> None:
        import random

        rnd = random.Random(1)
        with open_stream(settings) as stream:
            t_wall0 = time.time()
            t_event0 = int(t_wall0 * 1000) // 60_000 * 60_000
            n = 0
            warm_until = None
            measure_from = None
            while True:
                now = time.time()
                due = int((now - t_wall0) * LIVE_RATE)
                batch = []
                while n < due:
                    et = t_event0 + int((n / LIVE_RATE) * SPEEDUP * 1000)
                    batch.append((f"{n:064x}", et, rnd.randrange(200, 20_000), 250, "bench", int(now * 1000)))
                    n += 1
                if batch:
                    stream.append_rows(batch)
                    written = time.time()
                    writes.extend((r[1], written) for r in batch)
                # Warm-up: wait for the engine's first delivery (Spark needs ~30 s to start).
                if measure_from is None and sink_db.exists() and _count(sink_db) > 0:
                    measure_from = time.time()
                    warm_until = measure_from + seconds
                if warm_until is not None and now > warm_until:
                    break
                if now - t_wall0 > seconds + 240:
                    break
                time.sleep(0.01)
        measure["from"] = measure_from or time.time()
        child.terminate()

    result = run_child(
        engine,
        "live",
        data_dir,
        {"RTML_WINDOW__ALLOWED_LATENESS_S": str(LIVE_LATENESS_S), "RTML_WINDOW__IDLE_TIMEOUT_S": "3600"},
        drive,
    )
    with sqlite3.connect(sink_db) as conn:
        delivered = conn.execute("SELECT minute, at FROM sink_log ORDER BY minute").fetchall()
    lat = []
    times = [w[0] for w in writes]
    import bisect

    for minute, at in delivered:
        # The first event written whose event time puts the watermark at or past the window end.
        i = bisect.bisect_left(times, minute + 60_000 + LIVE_LATENESS_S * 1000)
        if i < len(writes) and writes[i][1] >= measure["from"]:
            lat.append(at - writes[i][1])
    result["minutes_measured"] = len(lat)
    if lat:
        lat.sort()
        result["lat_p50_s"] = statistics.median(lat)
        result["lat_p95_s"] = lat[int(0.95 * (len(lat) - 1))]
        result["lat_max_s"] = lat[-1]
    return result


def _count(path: Path) -> int:
    try:
        with sqlite3.connect(path) as conn:
            return int(conn.execute("SELECT count(*) FROM sink_log").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=8, help="replay repetitions for the throughput run")
    parser.add_argument("--live-seconds", type=float, default=40.0, help="measured live time per engine")
    parser.add_argument("--worker", choices=["embedded", "spark"])
    parser.add_argument("--phase", choices=["drain", "live"])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.phase, args.out)
        return
    rows = replay_rows(args.copies)
    print(f"input: {len(rows):,} events ({args.copies} x the re-timed real replay, 5 % duplicates, disorder < 30 s)")
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="rtml-engines-") as tmp:
        root = Path(tmp)
        for engine in ("embedded", "spark"):
            print(f"{engine}: drain ...", flush=True)
            drain = throughput(engine, rows, root)
            print(f"{engine}: live ...", flush=True)
            live = latency(engine, args.live_seconds, root)
            results[engine] = {**{f"drain_{k}": v for k, v in drain.items()}, **{f"live_{k}": v for k, v in live.items()}}
        same = minutes_of(root / "drain-embedded") == minutes_of(root / "drain-spark")
        n_minutes = len(minutes_of(root / "drain-embedded"))
    print()
    print(f"{'':36}{'embedded':>14}{'spark local[2]':>16}")
    lines = [
        ("throughput, events/s (whole drain)", "drain_events_per_s", "{:,.0f}"),
        ("throughput, events/s (steady)", "drain_steady_events_per_s", "{:,.0f}"),
        ("drain time, s", "drain_seconds", "{:.2f}"),
        ("first micro-batch, s", "drain_first_batch_s", "{:.1f}"),
        ("Spark session start, s", "drain_startup_s", "{:.1f}"),
        ("latency write->sink p50, s", "live_lat_p50_s", "{:.3f}"),
        ("latency write->sink p95, s", "live_lat_p95_s", "{:.3f}"),
        ("latency write->sink max, s", "live_lat_max_s", "{:.3f}"),
        ("minutes measured (live)", "live_minutes_measured", "{:.0f}"),
        ("peak RSS drain, MB (incl. JVM)", "drain_peak_rss_mb", "{:,.0f}"),
        ("peak RSS live, MB (incl. JVM)", "live_peak_rss_mb", "{:,.0f}"),
    ]
    for label, key, fmt in lines:
        cells = [fmt.format(results[e][key]) if key in results[e] else "-" for e in ("embedded", "spark")]
        print(f"{label:36}{cells[0]:>14}{cells[1]:>16}")
    print(f"\nminutes identical across engines: {same} ({n_minutes:,} minutes)")


if __name__ == "__main__":
    main()
