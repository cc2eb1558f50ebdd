"""`rtml up` from a replay, a component killed with SIGKILL and restarted with no data lost,
then `rtml down --purge` leaving nothing behind: on both profiles, against the real services."""

from __future__ import annotations

import gzip
import json
import os
import random
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


def replay_file(tmp_path: Path) -> tuple[Path, dict[int, tuple[int, int]]]:
    """Synthetic traffic as websocket frames, and its per-minute (count, fee total) truth."""
    events = list(SyntheticSource(SyntheticConfig(seed=5, start=datetime(2024, 10, 1, tzinfo=UTC), minutes=MINUTES)))
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


class Isolated:
    """A Redis database and a PostgreSQL database of the test's own, on the machine's shared
    servers, so that the WHOLE keyspace and the WHOLE catalog can be compared before and after.

    Why not diff the shared db 0 and database `test`: other engineers' tests create and drop
    their own namespaces there at any moment, so a full diff of those would flap, and filtering
    it by "our namespace" is exactly the pattern search this test must not rely on (a key rtml
    wrote under another name would slip through both). In a database nobody else uses, any
    difference at all is rtml's doing. What could still escape: a part that ignored the
    configured database and wrote to db 0 / `test`; those are searched for anything carrying
    the namespace, and the server-wide role list is compared in full.
    """

    def __init__(self) -> None:
        import psycopg
        import redis

        admin = redis.Redis.from_url("redis://127.0.0.1:6379/0")
        used = {int(name[2:]) for name in admin.info("keyspace")}
        free = [n for n in range(8, 16) if n not in used]
        admin.close()
        assert free, "no empty Redis database among 8..15 for the test"
        self.redis_db = random.choice(free)
        self.redis_url = f"redis://127.0.0.1:6379/{self.redis_db}"
        self.redis = redis.Redis.from_url(self.redis_url)
        self.shared_redis = redis.Redis.from_url("redis://127.0.0.1:6379/0")
        self.pg_db = f"rtml_purge_test_{os.getpid()}_{random.randrange(10**6)}"
        self.server_dsn = "postgresql://postgres@127.0.0.1:5432/postgres"
        with psycopg.connect(self.server_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.pg_db}"')
        self.postgres_dsn = f"postgresql://postgres@127.0.0.1:5432/{self.pg_db}"

    def keyspace(self) -> dict[bytes, tuple[bytes, object]]:
        """Every key of the test's Redis database, with its type and value."""
        out: dict[bytes, tuple[bytes, object]] = {}
        for key in self.redis.scan_iter(count=1000):
            kind = self.redis.type(key)
            value: object = self.redis.dump(key)
            out[key] = (kind, value)
        return out

    def catalog(self) -> dict[str, list[tuple[str, ...]]]:
        """Every schema, relation, function, type and extension of the test's database, and the
        server's roles."""
        import psycopg

        queries = {
            "schemas": "SELECT nspname FROM pg_namespace",
            "relations": "SELECT n.nspname, c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace",
            "functions": "SELECT n.nspname, p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace",
            "types": "SELECT n.nspname, t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace",
            "extensions": "SELECT extname FROM pg_extension",
            "roles": "SELECT rolname FROM pg_roles",
        }
        with psycopg.connect(self.postgres_dsn, autocommit=True) as conn:
            found = {name: sorted(tuple(map(str, r)) for r in conn.execute(q).fetchall()) for name, q in queries.items()}
        # PostgreSQL's own per-connection temporary schemas: the server creates one when a session
        # first uses a temporary table and keeps it, empty, for reuse. Not rtml's; anything left
        # inside one would still show among the relations.
        found["schemas"] = [s for s in found["schemas"] if not s[0].startswith(("pg_temp_", "pg_toast_temp_"))]
        return found

    def shared_traces(self, namespace: str) -> list[str]:
        """Anything carrying the namespace in the shared db 0 or the shared database `test`."""
        import psycopg

        found = [repr(k) for k in self.shared_redis.scan_iter(match=f"*{namespace}*".encode(), count=1000)]
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True) as conn:
            found += [r[0] for r in conn.execute("SELECT nspname FROM pg_namespace WHERE nspname = %s", (namespace,))]
        return found

    def close(self) -> None:
        import psycopg

        self.redis.close()
        self.shared_redis.close()
        with psycopg.connect(self.server_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.pg_db}" WITH (FORCE)')


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
