"""The offline minutes' conformance suite (rtml.features.offline.OfflineMinutes): every backend class
in BACKENDS passes it.

Upserts are idempotent and the highest revision wins (across calls and within one batch), reads
by range are start-inclusive, end-exclusive and sorted (across a UTC day boundary, where the
embedded store splits its files), `recent`, `count`, retention with kept windows, stats, and a
`close()` that releases every file and socket and leaves the store usable.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import pandas as pd
from conformance_kit import Backend, Case, backend_cases, held, implementations, leaked

from rtml.features.offline import (
    OfflineMinutes,
    ParquetMinutes,
    PostgresMinutes,
    open_offline,
    to_source_frame,
)

BACKENDS: dict[type[OfflineMinutes], Backend[OfflineMinutes]] = {
    ParquetMinutes: Backend("embedded", ParquetMinutes),
    PostgresMinutes: Backend("services", PostgresMinutes),
}
case = backend_cases(BACKENDS)

MIDNIGHT = pd.Timestamp("2024-03-02", tz="UTC")
START = MIDNIGHT - pd.Timedelta(minutes=30)  # the minutes straddle a UTC day boundary


def source(first: int, n: int, revision: int = 0, extra: int = 0) -> pd.DataFrame:
    """Offline rows of n minutes from START + `first` minutes; every 7th minute is empty (no average)."""
    minute = pd.Series(pd.date_range(START + pd.Timedelta(minutes=first), periods=n, freq="min"))
    idx = range(first, first + n)
    return to_source_frame(
        pd.DataFrame(
            {
                "minute": minute,
                "tx_count": [0 if i % 7 == 0 else i + extra for i in idx],
                "fee_total_sat": [0 if i % 7 == 0 else 1000 * i for i in idx],
                "fee_avg_sat": [math.nan if i % 7 == 0 else 1000.0 * i / (i + extra) for i in idx],
                "event_time": minute + pd.Timedelta(minutes=1),
                "revision": revision,
            }
        )
    )


def rows(frame: pd.DataFrame) -> list[tuple[Any, ...]]:
    """A frame's rows as plain values (each backend has its own dtypes), NaN as None."""
    return [
        (int(k), c, int(m.value // 1000), int(tx), int(t), None if pd.isna(a) else float(a), int(r), int(e.value // 1000))
        for k, c, m, tx, t, a, r, e in zip(
            frame["minute_key"], frame["chain_id"], pd.to_datetime(frame["minute"], utc=True), frame["tx_count"],
            frame["fee_total_sat"], frame["fee_avg_sat"], frame["revision"], pd.to_datetime(frame["event_time"], utc=True),
            strict=True,
        )
    ]  # fmt: skip


def at(minutes: int) -> datetime:
    return (START + pd.Timedelta(minutes=minutes)).to_pydatetime()


def test_every_backend_class_is_in_the_suite() -> None:
    assert implementations(OfflineMinutes, "rtml.features") == set(BACKENDS)


def test_the_factory_picks_the_class_for_its_profile(case: Case[OfflineMinutes]) -> None:
    with open_offline(case.settings) as store:
        assert type(store) is case.cls


def test_an_upsert_is_idempotent(case: Case[OfflineMinutes]) -> None:
    store, sent = case.open(), source(0, 60)
    assert store.count() == (0, 0) and rows(store.read()) == []
    assert rows(store.upsert(sent)) == rows(sent)  # the winners of the minutes given
    assert rows(store.upsert(sent)) == rows(sent)  # a retried delivery
    assert store.count() == (60, 60)
    assert rows(store.read()) == rows(sent)


def test_the_highest_revision_wins(case: Case[OfflineMinutes]) -> None:
    store = case.open()
    store.upsert(source(0, 40))
    newer = source(10, 5, revision=2, extra=500)
    assert rows(store.upsert(newer)) == rows(newer)
    stale = source(8, 5, revision=1, extra=900)  # minutes 8, 9 are new to revision 1; 10-12 hold revision 2
    winners = store.upsert(stale)
    assert rows(winners) == rows(pd.concat([stale.iloc[:2], newer.iloc[:3]], ignore_index=True))
    # within one batch too: the minute's highest revision, whatever its place
    batch = pd.concat([source(30, 1, revision=5, extra=1), source(30, 1, revision=4, extra=2)], ignore_index=True)
    assert rows(store.upsert(batch)) == rows(batch.iloc[:1])
    stored = store.read()
    assert store.count() == (40, 40)
    assert list(stored["revision"]) == [0] * 8 + [1] * 2 + [2] * 5 + [0] * 15 + [5] + [0] * 9


def test_reads_by_range_across_a_day_boundary_and_recent(case: Case[OfflineMinutes]) -> None:
    store, sent = case.open(), source(0, 60)
    store.upsert(sent.iloc[::-1])  # given in any order, read in minute order
    assert rows(store.read(at(25), at(35))) == rows(sent.iloc[25:35])  # start inclusive, end exclusive
    assert rows(store.read(at(40))) == rows(sent.iloc[40:])
    assert rows(store.read(end=at(3))) == rows(sent.iloc[:3])
    assert rows(store.read(at(60), at(90))) == []
    assert rows(store.recent(5)) == rows(sent.iloc[55:])
    size, minutes, oldest = store.stats()
    assert size > 0 and minutes == 60 and oldest == int(START.value // 10**6)


def test_retention_drops_old_minutes_outside_the_kept_windows(case: Case[OfflineMinutes]) -> None:
    store, sent = case.open(), source(0, 60)
    store.upsert(sent)
    assert store.trim(at(40), [(at(5), at(8))]) == 37  # minutes 0-39 but 5, 6, 7
    assert rows(store.read()) == rows(pd.concat([sent.iloc[5:8], sent.iloc[40:]], ignore_index=True))
    assert store.count() == (23, 23)


def test_close_releases_every_file_and_socket_and_a_later_call_reopens(case: Case[Any]) -> None:
    before = held(case.settings)
    store = case.open()
    store.upsert(source(0, 3))
    assert store.count() == (3, 3)
    store.close()
    store.close()  # a second close is harmless
    assert leaked(case.settings, before) == {}
    assert store.count() == (3, 3)
    store.close()
    assert leaked(case.settings, before) == {}
