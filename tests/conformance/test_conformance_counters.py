"""The counters' conformance suite (rtml.storage.Counters): every backend class in BACKENDS passes it.

Totals add up, levels overwrite, one `add` is atomic (several writers at once lose no increment,
and a reader never sees half of one), everything survives a restart, and `close()` releases
every file and socket.
"""

from __future__ import annotations

import threading
from typing import Any

from conformance_kit import Backend, Case, backend_cases, held, implementations, leaked

from rtml.storage import COUNTER_FILES, Counters, RedisCounters, SqliteCounters, counters_key, open_counters

PART = "conformance"  # a part of its own: `<data_dir>/counters/conformance.sqlite` embedded
assert PART not in COUNTER_FILES

BACKENDS: dict[type[Counters], Backend[Counters]] = {
    SqliteCounters: Backend("embedded", lambda s: SqliteCounters(s.path("counters", f"{PART}.sqlite"))),
    RedisCounters: Backend("services", lambda s: RedisCounters(s.redis_url, counters_key(s, PART))),
}
case = backend_cases(BACKENDS)


def test_every_backend_class_is_in_the_suite() -> None:
    assert implementations(Counters, "rtml.storage") == set(BACKENDS)


def test_the_factory_picks_the_class_for_its_profile(case: Case[Counters]) -> None:
    with open_counters(case.settings, PART) as counters:
        assert type(counters) is case.cls
        counters.add({"seen_by_the_suite": 1})
    assert case.open().read() == {"seen_by_the_suite": 1.0}  # the same store as the suite's opener


def test_totals_add_up_and_levels_overwrite(case: Case[Counters]) -> None:
    counters = case.open()
    assert counters.read() == {}
    counters.add({"received": 3, "bytes": 1.5})
    counters.add({"received": 2, "skipped": 0})
    counters.add({})
    counters.set({"last_write_s": 10.0})
    counters.set({"last_write_s": 7.25})  # a level: overwritten, not added
    counters.add({"last_write_s": 1})
    values = counters.read()
    assert values.get("skipped", 0.0) == 0.0
    values.pop("skipped", None)
    assert values == {"received": 5.0, "bytes": 1.5, "last_write_s": 8.25}


def test_concurrent_adds_lose_nothing_and_a_reader_never_sees_half_of_one(case: Case[Counters]) -> None:
    writers, adds = 4, 40
    done = threading.Event()
    torn: list[dict[str, float]] = []

    def write() -> None:
        with case.backend.open(case.settings) as mine:
            for _ in range(adds):
                mine.add({"events": 1, "batches": 1})

    def watch() -> None:
        with case.backend.open(case.settings) as mine:
            while not done.is_set():
                seen = mine.read()
                if seen.get("events") != seen.get("batches"):
                    torn.append(seen)

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=write) for _ in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    watcher.join()
    assert torn == []
    assert case.open().read() == {"events": writers * adds, "batches": writers * adds}


def test_counters_survive_a_restart(case: Case[Counters]) -> None:
    counters = case.open()
    counters.add({"received": 41})
    counters.set({"level": 3})
    counters.close()
    again = case.open()
    again.add({"received": 1})
    assert again.read() == {"received": 42.0, "level": 3.0}


def test_close_releases_every_file_and_socket(case: Case[Any]) -> None:
    before = held(case.settings)
    counters = case.open()
    counters.add({"received": 1})
    assert counters.read() == {"received": 1.0}
    assert leaked(case.settings, before), "open counters hold a file or socket"
    counters.close()
    counters.close()  # a second close is harmless
    assert leaked(case.settings, before) == {}
