"""`rtml up` from a replay, a component killed with SIGKILL and restarted with no data lost,
then `rtml down --purge` leaving nothing behind: on both profiles, against the real services."""

from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import Isolated

from rtml.config import get_settings
from rtml.contracts import MINUTE_MS
from rtml.ops.supervisor import read_state
from rtml.sources.synthetic import SyntheticConfig, SyntheticSource, to_utx_message

pytestmark = pytest.mark.slow
MINUTES = 90
# 90 minutes of traffic replayed at 600x: about 9 s of ingestion, long enough to kill the
# aggregator in the middle of it.
SPEED = "600"


def rtml(*args: str, check: bool = True, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [sys.executable, "-m", "rtml", *args], capture_output=True, text=True, timeout=timeout, env=os.environ.copy()
    )
    if check:
        assert out.returncode == 0, f"rtml {' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def status() -> dict[str, Any]:
    return json.loads(rtml("status", "--json").stdout)  # type: ignore[no-any-return]


def component(name: str) -> dict[str, Any]:
    """The supervisor's own record of a component (what `rtml status` reads)."""
    state = read_state(get_settings())
    assert state is not None
    return state["components"][name]  # type: ignore[no-any-return]


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}; state: {read_state(get_settings())}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def replay_file(tmp_path: Path, minutes: int = MINUTES) -> tuple[Path, dict[int, tuple[int, int]]]:
    """Synthetic traffic as websocket frames, and its per-minute (count, fee total) truth."""
    events = list(SyntheticSource(SyntheticConfig(seed=5, start=datetime(2024, 10, 1, tzinfo=UTC), minutes=minutes)))
    path = tmp_path / "replay.jsonl.gz"
    with gzip.open(path, "wt") as out:
        for event in events:
            out.write(json.dumps(to_utx_message(event)) + "\n")
    counts: Counter[int] = Counter()
    fees: Counter[int] = Counter()
    for event in events:
        minute = (event.event_time // 1000 * 1000) // MINUTE_MS * MINUTE_MS  # wire times are seconds
        counts[minute] += 1
        fees[minute] += event.fee_sat
    return path, {m: (counts[m], fees[m]) for m in counts}


def pipeline_processes(data_dir: Path) -> list[psutil.Process]:
    """Processes of this pipeline: anything started with this data directory in its environment."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.pid != os.getpid() and proc.environ().get("RTML_DATA_DIR") == str(data_dir):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def run_up_kill_down(data_dir: Path, tmp_path: Path, *up_options: str) -> None:
    try:
        check_up_kill_down(data_dir, tmp_path, *up_options)
    finally:  # a failed check must not leave a pipeline running
        if data_dir.exists():
            rtml("down", check=False)


def check_up_kill_down(data_dir: Path, tmp_path: Path, *up_options: str) -> None:
    """`rtml up [up_options]`, then every later command plain: the data directory's marker
    supplies the profile (no --profile repeated for status, down, --purge)."""
    path, truth = replay_file(tmp_path)
    port = free_port()
    up = rtml("up", *up_options, "--source", "replay", "--file", str(path), "--speed", SPEED, "--port", str(port))
    assert "up" in up.stdout
    again = rtml("up", "--source", "replay", "--file", str(path), "--port", str(port))
    assert "already up" in again.stdout

    victim = component("aggregate")
    assert victim["pid"] and victim["restarts"] == 0
    os.kill(victim["pid"], signal.SIGKILL)
    wait_for(lambda: component("aggregate")["restarts"] == 1 and component("aggregate")["state"] == "running",
             "the aggregator to be restarted")
    wait_for(lambda: component("ingest")["state"] == "finished", "the replay to finish")

    from rtml.aggregate.sinks import read_minutes

    def all_closed() -> bool:
        rows = read_minutes(get_settings())
        return bool(rows) and rows[-1].minute.timestamp() * 1000 >= max(truth)

    wait_for(all_closed, "every minute to be closed (idle watermark advance)")
    rows = read_minutes(get_settings())
    got = {int(r.minute.timestamp() * 1000): (r.tx_count, r.fee_total_sat) for r in rows}
    expected = {m: truth.get(m, (0, 0)) for m in range(min(truth), max(truth) + MINUTE_MS, MINUTE_MS)}
    assert got == expected  # no minute lost, none counted twice across the SIGKILL

    info = status()
    assert {c["name"]: c["restarts"] for c in info["components"]}["aggregate"] == 1
    assert all(c["pid"] for c in info["components"] if c["state"] == "running")
    assert info["stream_lag_events"] == 0
    assert info["newest_minute_end"] == rows[-1].event_time.isoformat()
    profile = info["profile"]
    shown = rtml("features", "show", "--last", "3", "--format", "csv").stdout.strip().splitlines()
    assert len(shown) == 4 and shown[-1].startswith(rows[-1].minute.strftime("%Y-%m-%dT%H:%M"))  # header + 3
    assert rtml("down", "--purge", check=False).returncode == 1  # no terminal: refuses without --yes
    assert pipeline_processes(data_dir) == []  # but everything was stopped
    purge = rtml("down", "--purge", "--yes")
    assert "purged" in purge.stdout
    if profile == "services":
        assert "Redis keys" in purge.stdout and "PostgreSQL schema" in purge.stdout
    assert not data_dir.exists()


@pytest.mark.timeout(400)
def test_embedded_up_kill_restart_purge(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTML_WINDOW__IDLE_TIMEOUT_S", "2")
    run_up_kill_down(data_dir, tmp_path)
    assert pipeline_processes(data_dir) == []


@pytest.mark.timeout(400)
def test_services_round_trip_plain_commands_leave_the_keyspace_and_catalog_as_they_were(
    data_dir: Path, redis_url: str, postgres_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`rtml up --profile services`, then plain `rtml status` and `rtml down --purge --yes`
    (no --profile: the data directory's marker says services): afterwards the whole Redis
    keyspace and the whole PostgreSQL catalog are exactly as before, another application's key
    and table included, and nothing carries the namespace on the shared servers."""
    import psycopg

    iso = Isolated()
    try:
        monkeypatch.delenv("RTML_PROFILE")
        monkeypatch.setenv("RTML_REDIS_URL", iso.redis_url)
        monkeypatch.setenv("RTML_POSTGRES_DSN", iso.postgres_dsn)
        monkeypatch.setenv("RTML_WINDOW__IDLE_TIMEOUT_S", "2")
        monkeypatch.setenv("RTML_STREAM__ALLOW_VOLATILE_REDIS", "true")  # the machine's Redis has no AOF
        iso.redis.set(f"otherapp:session:{os.getpid()}", "keep me")
        with psycopg.connect(iso.postgres_dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE public.otherapp_keep (x int)")
        keys_before, catalog_before = iso.keyspace(), iso.catalog()
        run_up_kill_down(data_dir, tmp_path, "--profile", "services")
        namespace = get_settings(profile="services").namespace
        assert iso.keyspace() == keys_before
        assert iso.catalog() == catalog_before
        assert iso.shared_traces(namespace) == []
    finally:
        iso.close()
