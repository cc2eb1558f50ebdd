"""Shared fixtures: an isolated data directory per test, the real services, the real recordings.

A test that needs Redis, PostgreSQL, Java, Chromium or `../shared/data` skips with the reason
when it is missing on a developer's machine, and fails when CI=true: CI must cover it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rtml.config import Settings, get_settings

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("RTML_SHARED_DATA", REPO.parent / "shared" / "data"))
IN_CI = os.environ.get("CI", "").lower() == "true"


def require(available: bool, why: str) -> None:
    """Skip with `why` where the dependency is absent, fail in CI where it must be present."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"required in CI: {why}")
    pytest.skip(why)


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh data directory, made the default for everything the test runs (subprocesses too)."""
    path = tmp_path / "rtml-data"
    monkeypatch.setenv("RTML_DATA_DIR", str(path))
    monkeypatch.setenv("RTML_PROFILE", "embedded")
    monkeypatch.setenv("RTML_CONFIG", str(tmp_path / "absent.toml"))
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("DO_NOT_TRACK", "1")
    return path


@pytest.fixture
def settings(data_dir: Path) -> Settings:
    return get_settings()


@pytest.fixture
def redis_url() -> str:
    require(_port_open("127.0.0.1", 6379), "Redis is not answering on 127.0.0.1:6379")
    return "redis://127.0.0.1:6379/0"


@pytest.fixture
def postgres_dsn() -> str:
    require(_port_open("127.0.0.1", 5432), "PostgreSQL is not answering on 127.0.0.1:5432")
    return "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture
def services_settings(
    data_dir: Path, redis_url: str, postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    """The services profile on the real Redis and PostgreSQL, in a namespace of its own."""
    monkeypatch.setenv("RTML_PROFILE", "services")
    monkeypatch.setenv("RTML_REDIS_URL", redis_url)
    monkeypatch.setenv("RTML_POSTGRES_DSN", postgres_dsn)
    # The machine's Redis (and CI's) runs without AOF: `rtml up` would refuse it (test_services_health).
    monkeypatch.setenv("RTML_STREAM__ALLOW_VOLATILE_REDIS", "true")
    settings = get_settings()
    yield settings
    # Leave nothing in the shared Redis and PostgreSQL: the same purge as `rtml down --purge`.
    from rtml.ops.purge import execute_purge, plan_purge

    execute_purge(settings, plan_purge(settings, services=True))


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """`f(appendonly=True)`: start a `redis-server` of the test's own on a free port (tests/faults.py
    `PrivateRedis`: stop / kill / wipe / restart it at will); every one is stopped afterwards."""
    from faults import REDIS_SERVER, PrivateRedis

    require(REDIS_SERVER is not None, "redis-server is not installed (Debian package redis-server)")
    servers: list[PrivateRedis] = []

    def start(appendonly: bool = True, extra: tuple[str, ...] = ()) -> PrivateRedis:
        server = PrivateRedis(tmp_path / f"redis-{len(servers)}", appendonly=appendonly, extra=extra)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.kill()


@pytest.fixture
def private_postgres(
    data_dir: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Settings, Any]]:
    """(services settings, PrivatePostgres): a PostgreSQL cluster of the test's own (see
    tests/faults_pg.py), which the test may stop, kill and start; removed afterwards."""
    from faults_pg import BIN, PrivatePostgres

    require(BIN is not None, "PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    cluster = PrivatePostgres().start()
    monkeypatch.setenv("RTML_PROFILE", "services")
    monkeypatch.setenv("RTML_REDIS_URL", redis_url)
    monkeypatch.setenv("RTML_POSTGRES_DSN", cluster.dsn)
    settings = get_settings()
    try:
        yield settings, cluster
    finally:
        cluster.close()
        import redis

        client = redis.Redis.from_url(redis_url)  # the cluster went with its tables: only Redis keys stay
        for key in client.scan_iter(f"{settings.namespace}:*"):
            client.delete(key)
        client.close()


@pytest.fixture(params=["embedded", "services"])
def backend_settings(request: pytest.FixtureRequest, data_dir: Path) -> Settings:
    """One suite for every backend of a part (as Feast runs one universal suite on every store)."""
    name = "settings" if request.param == "embedded" else "services_settings"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real recordings beside the project (never copied into it)."""
    require(SHARED_DATA.is_dir(), f"the real recordings are not at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def java() -> str:
    path = shutil.which("java")
    require(path is not None, "Java 17+ is needed by Spark and is not on PATH")
    return str(path)


@pytest.fixture(scope="session")
def chromium() -> str:
    path = "/usr/bin/chromium"
    require(os.path.exists(path), "Debian's chromium is not installed (.ci/run installs it)")
    return path


@pytest.fixture
def artifacts_dir() -> Path:
    """Where tests leave screenshots and reports for people to look at."""
    path = REPO / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path


SERVING_TOKEN = "test-admin-token"


def seed_in_another_process() -> list[str]:
    """The serving bed, written by another process as a trainer would: the service must find the
    models through the registry alone (no MLflow state left in this process)."""
    out = subprocess.run(
        [sys.executable, "-m", "rtml.serving.seed"], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return list(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, list[str]]]:
    """The serving bed (rtml.serving.seed): a day of synthetic minutes ending now in the feature
    store and two small forecasters in MLflow, v1 champion; v1 is champion again afterwards."""
    from rtml.model import registry

    root = tmp_path_factory.getbasetemp() / "serving-bed"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RTML_DATA_DIR", str(root / "rtml-data"))
        mp.setenv("RTML_PROFILE", "embedded")
        mp.setenv("RTML_CONFIG", str(root / "absent.toml"))
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        mp.setenv("RTML_SERVING__ADMIN_TOKEN", SERVING_TOKEN)
        # The bed's newest minute is as old as the bed, which other modules may have seeded long
        # before: freshness is tested on its own (test_stale_features_get_a_clear_503...).
        mp.setenv("RTML_SERVING__MAX_FEATURE_AGE_S", str(7 * 86400))
        settings = get_settings()
        versions = seed_in_another_process()
        yield settings, versions
        if registry.champion_version(settings) != versions[0]:
            registry.promote(settings, versions[0], reason="test cleanup")


@pytest.fixture(scope="session")
def promtool() -> str:
    """Prometheus' own checker (Debian's `prometheus` package; .ci/run installs it)."""
    path = shutil.which("promtool")
    require(path is not None, "promtool is not installed (Debian package prometheus; .ci/run installs it)")
    return str(path)


CLAIM = "rtml-test-claim"


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
        import random

        import psycopg
        import redis

        admin = redis.Redis.from_url("redis://127.0.0.1:6379/0")
        used = {int(name[2:]) for name in admin.info("keyspace")}
        admin.close()
        free = [n for n in range(8, 16) if n not in used]
        random.shuffle(free)
        self.redis_db = -1
        for n in free:  # claimed with SET NX, so two tests running at once never share one
            client = redis.Redis.from_url(f"redis://127.0.0.1:6379/{n}")
            if client.set(CLAIM, os.getpid(), nx=True, ex=3600):
                self.redis_db, self.redis = n, client
                break
            client.close()
        assert self.redis_db >= 0, "no empty Redis database among 8..15 for the test"
        self.redis_url = f"redis://127.0.0.1:6379/{self.redis_db}"
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

        self.redis.flushdb()  # the database was empty and claimed: everything in it is the test's
        self.redis.close()
        self.shared_redis.close()
        with psycopg.connect(self.server_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.pg_db}" WITH (FORCE)')


@pytest.fixture
def isolated(redis_url: str, postgres_dsn: str) -> Iterator[Isolated]:
    iso = Isolated()
    yield iso
    iso.close()


def _write_engine_minutes(settings: Settings, minutes: Any) -> None:
    from rtml.aggregate.sinks import MinutesTable, aggregate_db_path
    from rtml.contracts import MinuteFeatures

    table = MinutesTable(aggregate_db_path(settings))
    table.upsert(
        [
            MinuteFeatures(r.minute.to_pydatetime(), int(r.tx_count), int(r.fee_total_sat),
                           None if r.fee_avg_sat != r.fee_avg_sat else float(r.fee_avg_sat),
                           r.event_time.to_pydatetime(), int(r.revision))
            for r in minutes.itertuples(index=False)
        ]
    )  # fmt: skip
    table.close()


@pytest.fixture
def write_engine_minutes() -> Callable[[Settings, Any], None]:
    """`f(settings, minutes)`: put `minutes` (a frame) in the engine's own table, as its first sink
    does, which moves the pipeline's clock to their end."""
    return _write_engine_minutes


def _log_pipeline_forecasts(settings: Settings, minutes: Any, start: Any, end: Any) -> int:
    from rtml.serving.forecaster import Forecaster

    _write_engine_minutes(settings, minutes)
    forecaster = Forecaster(settings)
    try:
        boundaries = range(int(start.timestamp() * 1000), int(end.timestamp() * 1000) + 1, 60_000)
        return sum(forecaster.forecast_at(t) is not None for t in boundaries)
    finally:
        forecaster.close()


@pytest.fixture
def log_pipeline_forecasts() -> Callable[[Settings, Any, Any, Any], int]:
    """`f(settings, minutes, start, end)`: put `minutes` (a frame) in the engine's table and log the
    pipeline's forecast at every minute boundary in [start, end], as the scheduler's forecast job
    does; returns how many were logged."""
    return _log_pipeline_forecasts
