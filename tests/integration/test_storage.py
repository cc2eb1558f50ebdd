"""The shared storage helpers: one conformance suite for counters, run on every backend (SQLite
embedded, a real Redis in services), and the connection helpers on real SQLite and PostgreSQL."""

from __future__ import annotations

import threading

import pytest

from rtml.config import Settings
from rtml.storage import Counters, SqliteCounters, open_counters, pg_connect, sqlite_connect


def test_counters_add_set_and_read_back(backend_settings: Settings) -> None:
    with open_counters(backend_settings, "conformance") as counters:
        assert isinstance(counters, Counters)
        assert counters.read() == {}
        counters.add({"received": 3, "valid": 2, "late": 0})
        counters.add({"received": 1.5})
        counters.set({"last_write_time_s": 1_700_000_000.25})
        counters.set({"last_write_time_s": 1_700_000_001.5})
    with open_counters(backend_settings, "conformance") as again:  # persisted, not in memory
        assert again.read() == {"received": 4.5, "valid": 2.0, "last_write_time_s": 1_700_000_001.5}
    with open_counters(backend_settings, "other") as other:  # parts do not share counters
        assert other.read() == {}


def test_concurrent_writers_lose_no_increment(backend_settings: Settings) -> None:
    """Writers with their own connections (as processes have) add at once: every add counts."""
    writers, adds = 4, 25

    def write() -> None:
        with open_counters(backend_settings, "race") as counters:
            for _ in range(adds):
                counters.add({"n": 1, "twice": 2})

    threads = [threading.Thread(target=write) for _ in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with open_counters(backend_settings, "race") as counters:
        assert counters.read() == {"n": writers * adds, "twice": 2 * writers * adds}


def test_sqlite_counters_commit_and_roll_back_with_their_store(settings: Settings) -> None:
    """Given a store's connection, an add inside the store's transaction goes with it."""
    db = sqlite_connect(settings.path("store.sqlite"))
    db.execute("CREATE TABLE rows (x INTEGER)")
    counters = SqliteCounters(conn=db)
    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT INTO rows VALUES (1)")
    counters.add({"rows": 1})
    db.execute("ROLLBACK")
    assert counters.read() == {} and db.execute("SELECT count(*) FROM rows").fetchone()[0] == 0
    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT INTO rows VALUES (1)")
    counters.add({"rows": 1})
    db.execute("COMMIT")
    assert counters.read() == {"rows": 1.0}
    counters.close()  # not the store's connection: it stays open
    assert db.execute("SELECT count(*) FROM rows").fetchone()[0] == 1
    db.close()


def test_sqlite_connect_sets_wal_and_durability(settings: Settings) -> None:
    fast = sqlite_connect(settings.path("fast.sqlite"), auto_vacuum=True)
    safe = sqlite_connect(settings.path("safe.sqlite"), synchronous="FULL", check_same_thread=True)
    assert fast.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert [c.execute("PRAGMA synchronous").fetchone()[0] for c in (fast, safe)] == [1, 2]  # NORMAL, FULL
    assert [c.execute("PRAGMA auto_vacuum").fetchone()[0] for c in (fast, safe)] == [2, 0]  # INCREMENTAL, NONE
    fast.close()
    safe.close()


@pytest.mark.services
def test_pg_connect_makes_the_namespace_schema(services_settings: Settings) -> None:
    """Every connection finds the schema, also after it was dropped behind its back (a purge)."""
    schema_of = "SELECT count(*) FROM information_schema.schemata WHERE schema_name = %s"
    for _ in range(2):
        with pg_connect(services_settings) as conn:
            assert conn.execute(schema_of, (services_settings.namespace,)).fetchone() == (1,)
            conn.execute(f'DROP SCHEMA "{services_settings.namespace}" CASCADE')
