"""The services profile rides out its services: a 60 s outage, a clean restart and a SIGKILL of
both Redis and PostgreSQL (test-owned, on free ports), each while a paced replay runs through
`rtml up`. After each fault the pipeline recovers by itself within RECOVERY_BOUND_S with no
component restarted; at the end the minutes (the engine's and the offline store's) equal the
pandas truth of the input, and the event log tells each outage (`service.down`/`service.up`).

One `rtml up` for all three faults (the suite's budget): the clean restart, the SIGKILL, then
the outage, each once the pipeline recovered from the one before and while the replay runs.
Both services fail together in each fault: the harder case, and one 60 s wait instead of two.
Prints, per fault, the recovery time and the stream events that waited (the closing note's figures).
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from faults import PrivateRedis
from faults_pg import BIN, PrivatePostgres
from test_ops_up_down import component, free_port, replay_file, rtml, status

from rtml.config import get_settings
from rtml.contracts import MINUTE_MS

pytestmark = pytest.mark.slow
# 100 minutes at 60x: 100 s of replay, still running when the last fault starts (about 30 s
# after `rtml up` returns); the outage itself is the 60 s, and what the replay was due
# to send meanwhile waits for Redis (back-pressure), then goes in at once.
MINUTES, SPEED, OUTAGE_S = 100, "60", 60.0
# Components back off at most rtml.outage.BACKOFF_MAX_S (5 s) between tries; the bound
# leaves room for a loaded machine (PostgreSQL's crash recovery, MLflow reconnecting).
RECOVERY_BOUND_S = 30.0


def sigkill_postgres(cluster: PrivatePostgres) -> None:
    """SIGKILL the postmaster and its children (a crash; the next start replays the WAL)."""
    pid = int((cluster.dir / "data" / "postmaster.pid").read_text().split()[0])
    family = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    for proc in family:
        proc.send_signal(signal.SIGKILL)
    psutil.wait_procs(family, timeout=30)


def poll(condition: Callable[[], bool], what: str, timeout: float) -> float:
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, f"{what}: not within {timeout:.0f} s; {status()['components']}"
        time.sleep(0.2)
    return time.monotonic() - start


def events_in() -> float:
    from rtml.aggregate.embedded import aggregate_counters

    return aggregate_counters(get_settings())["events_in"]


def offline_rows() -> int:
    from rtml.features.offline import open_offline

    store = open_offline(get_settings())
    try:
        return store.count()[0]
    finally:
        store.close()


def recovered(consumed: float, written: int, since: float, parts: dict[str, float]) -> bool:
    """Recovered: every component `ok`, the engine consuming the stream again, and PostgreSQL
    taking the feature store's rows again with nothing left in a spool (or, when the replay
    ended meanwhile, nothing left to take: the engine consumed it all and PostgreSQL holds all
    its minutes). `parts` gets the seconds after `since` at which each of them first held (the
    figures' breakdown)."""
    from rtml.spool import spool_stats

    checks = {
        "stream_s": lambda: events_in() > consumed or caught_up(),
        "postgres_rows_s": lambda: offline_rows() > written or (caught_up() and offline_rows() == engine_rows()),
        "spools_empty_s": lambda: not any(s["records"] for s in spool_stats(get_settings()).values()),
        "components_ok_s": healthy,
    }
    for name, check in checks.items():
        if name not in parts and check():
            parts[name] = round(time.monotonic() - since, 1)
    return len(parts) == len(checks) and healthy()


def engine_rows() -> int:
    from rtml.aggregate.sinks import read_minutes

    return len(read_minutes(get_settings()))


def caught_up() -> bool:
    """The replay ended (during the outage on a loaded machine) and the engine consumed all of
    it: no later event can show it consuming again, and none needs to."""
    from rtml.aggregate.embedded import aggregate_counters
    from rtml.ops.supervisor import read_state

    state = read_state(get_settings())
    assert state is not None
    ended = state["components"]["ingest"]["state"] == "finished"
    return ended and aggregate_counters(get_settings())["lag_events"] == 0


def healthy() -> bool:
    """Every running component says `ok` in its health file (what `rtml status` shows; read
    directly so that the recovery time is not the CLI's start-up time). Serve keeps none."""
    from rtml.ops.supervisor import read_state
    from rtml.outage import read_health

    settings = get_settings()
    state = read_state(settings)
    assert state is not None
    running = [c["name"] for c in state["components"].values() if c["state"] == "running"]
    return all((read_health(settings, n) or {"health": "ok"})["health"] == "ok" for n in running)


@pytest.mark.timeout(600)
def test_redis_and_postgres_outage_restart_and_sigkill_during_a_replay(
    data_dir: Path, tmp_path: Path, private_redis: Callable[..., PrivateRedis], monkeypatch: pytest.MonkeyPatch
) -> None:
    if BIN is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    redis = private_redis()
    pg = PrivatePostgres().start()
    monkeypatch.setenv("RTML_PROFILE", "services")
    monkeypatch.setenv("RTML_REDIS_URL", redis.url)
    monkeypatch.setenv("RTML_POSTGRES_DSN", pg.dsn)
    # The replay is in order: a short lateness closes its last minute soon after it ends.
    monkeypatch.setenv("RTML_WINDOW__ALLOWED_LATENESS_S", "10")
    path, truth = replay_file(tmp_path, MINUTES)
    stream_key = f"{get_settings().namespace}:stream:tx"
    figures: dict[str, dict[str, Any]] = {}
    try:
        up_s = time.monotonic()
        rtml("up", "--source", "replay", "--file", str(path), "--speed", SPEED, "--port", str(free_port()))
        figures["up"] = {"s": round(time.monotonic() - up_s, 1)}
        poll(lambda: events_in() > 0, "the first events aggregated", 60)

        def fault(name: str, break_them: Callable[[], None], down_s: float = 0.0) -> None:
            assert component("ingest")["state"] == "running", "the replay ended before the fault"
            with redis.client() as c:
                before = int(c.xlen(stream_key))
            started = time.time()
            break_them()
            if down_s:
                time.sleep(down_s)  # the outage itself: its length is the fault, not a synchronisation
                during = status()  # status answers during the outage and says who is degraded
                degraded = {c["name"] for c in during["components"] if c["health"] == "degraded"}
                assert {"ingest", "aggregate"} <= degraded, during["components"]
                assert during["unreadable"], "status read the stream while Redis was down?"
            if not redis.running:
                redis.start()
            if not pg.answers():
                pg.start()
            back = time.time()
            consumed, written, parts = events_in(), offline_rows(), {}
            since = time.monotonic()
            recovery = poll(lambda: recovered(consumed, written, since, parts), f"recovery after {name}: {parts}",
                            RECOVERY_BOUND_S)  # fmt: skip
            with redis.client() as c:
                delayed = int(c.xlen(stream_key)) - before
            if figures:  # the event log window of the fault before ends where this one starts
                list(figures.values())[-1].setdefault("window", (0.0, started))
            figures[name] = {"down_s": round(back - started, 1), "recovery_s": round(recovery, 1),
                             "events_appended_from_fault_to_recovery": delayed, "start": started, **parts}  # fmt: skip

        def outage() -> None:
            redis.stop()
            pg.stop()

        def restart() -> None:
            redis.stop()
            pg.stop()
            redis.start()
            pg.start()

        def kill() -> None:
            redis.kill()
            sigkill_postgres(pg)

        fault("restart", restart)
        fault("sigkill", kill)
        fault("outage", outage, OUTAGE_S)

        print("\nfault figures:", json.dumps({k: {n: v for n, v in f.items() if n not in ("start", "window")} for k, f in figures.items()}))
        poll(lambda: component("ingest")["state"] == "finished", "the replay to finish", 240)
        from rtml.aggregate.sinks import read_minutes

        def all_closed() -> bool:
            rows = read_minutes(get_settings())
            return bool(rows) and rows[-1].minute.timestamp() * 1000 >= max(truth)

        poll(all_closed, "every minute to be closed", 120)
        expected = {m: truth.get(m, (0, 0)) for m in range(min(truth), max(truth) + MINUTE_MS, MINUTE_MS)}
        rows = read_minutes(get_settings())
        assert {int(r.minute.timestamp() * 1000): (r.tx_count, r.fee_total_sat) for r in rows} == expected

        from rtml.features.offline import open_offline, to_minutes_frame

        def offline_matches() -> bool:  # the feature store's PostgreSQL copy, spooled rows included
            store = open_offline(get_settings())
            try:
                frame = to_minutes_frame(store.read())
                rows, minutes = store.count()
            finally:
                store.close()
            assert rows == minutes, "a minute written twice to the offline store"
            got = {int(m.timestamp() * 1000): (int(c), int(t))
                   for m, c, t in zip(frame["minute"], frame["tx_count"], frame["fee_total_sat"], strict=True)}  # fmt: skip
            return got == expected

        poll(offline_matches, "the offline store to equal the truth", 60)
        info = status()
        assert {c["name"]: c["restarts"] for c in info["components"]} == dict.fromkeys(
            ("ingest", "archiver", "aggregate", "serve", "scheduler"), 0
        ), info["components"]  # nothing crash-looped: no restart at all

        from rtml.monitoring.events import EventLog

        log = EventLog(get_settings())
        try:
            told = [e.details for e in log.recent(limit=1000, prefix="service.")]
        finally:
            log.close()
        for name, fig in figures.items():
            if name == "up":
                continue
            start_ms, end_ms = int(fig["start"] * 1000), int(fig.get("window", (0, time.time()))[1] * 1000)
            downs = [d for d in told if "duration_s" not in d and start_ms <= d["at_ms"] <= end_ms]
            ups = [d for d in told if "duration_s" in d and start_ms <= d["down_ms"] <= end_ms]
            # A restart or SIGKILL takes PostgreSQL away for about a second: only a component that
            # wrote to it meanwhile notices (and tells). Ingest writes to Redis all the time.
            noticed = {"redis", "postgres"} if fig["down_s"] >= OUTAGE_S / 2 else {"redis"}
            assert noticed <= {d["service"] for d in downs} <= {"redis", "postgres"}, (name, told)
            assert sorted((d["component"], d["service"]) for d in downs) == sorted(
                (d["component"], d["service"]) for d in ups
            ), (name, told)  # every outage a component saw is closed by a service.up
            print(f"{name}: told by", sorted(f"{d['component']}:{d['service']}" for d in downs))
    finally:
        if data_dir.exists():
            rtml("down", check=False)
        if not redis.running:
            redis.start()  # the private_redis fixture stops it
        pg.close()
