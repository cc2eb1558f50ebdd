"""The online features' conformance suite (rtml.features.online): run on both profiles.

The online side has no class per backend: one reader, `OnlineMinutes`, reads through Feast's
online store, which feature_store.yaml (`feast_repo.store_yaml`, the profile's factory) makes
SQLite embedded and Redis in services. So this suite is parametrised over the profiles
(`backend_settings`), not over classes: what the writer pushes is read back (the window, minute
keys for an explicit end, gaps as absent minutes, a revision replacing its minute), and `close()`
releases every file and socket the reader opened and leaves it usable.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest
from conformance_kit import held, leaked

from rtml.config import Settings
from rtml.features.online import OnlineMinutes, online_reader
from rtml.features.writer import FeatureStoreSink

START = pd.Timestamp("2024-03-02 10:00", tz="UTC")
ONLINE_STORES = {"embedded": "SqliteOnlineStore", "services": "RedisOnlineStore"}


def minutes(first: int, n: int, revision: int = 0) -> pd.DataFrame:
    """n minutes from START + `first` (MinuteFeatures columns); every 9th is empty (no average)."""
    minute = pd.Series(pd.date_range(START + pd.Timedelta(minutes=first), periods=n, freq="min"))
    idx = range(first, first + n)
    return pd.DataFrame(
        {
            "minute": minute,
            "tx_count": [0 if i % 9 == 0 else i + 100 * revision for i in idx],
            "fee_total_sat": [0 if i % 9 == 0 else 1000 * i for i in idx],
            "fee_avg_sat": [math.nan if i % 9 == 0 else 1000.0 * i / (i + 100 * revision) for i in idx],
            "event_time": minute + pd.Timedelta(minutes=1),
            "revision": revision,
        }
    )


def plain(frame: pd.DataFrame) -> list[tuple[object, ...]]:
    return [
        (pd.Timestamp(m), int(c), int(t), None if pd.isna(a) else float(a), pd.Timestamp(e), int(r))
        for m, c, t, a, e, r in zip(
            frame["minute"], frame["tx_count"], frame["fee_total_sat"], frame["fee_avg_sat"],
            frame["event_time"], frame["revision"], strict=True,
        )
    ]  # fmt: skip


@pytest.fixture
def written(backend_settings: Settings) -> pd.DataFrame:
    """What the writer pushed: the window's worth and ten minutes more, minute 50 missing and
    minute 60 revised (the stored minutes, one row each)."""
    k = backend_settings.features.online_minutes
    sent = minutes(0, k + 10).drop(index=50)
    revised = minutes(60, 1, revision=3)
    sink = FeatureStoreSink(backend_settings)
    try:
        sink.write_frame(sent)
        sink.write_frame(revised)
    finally:
        sink.close()
    stored = pd.concat([sent[sent["minute"] != revised["minute"].iloc[0]], revised])
    return stored.sort_values("minute").reset_index(drop=True)


def test_what_the_writer_pushes_is_read_back(backend_settings: Settings, written: pd.DataFrame) -> None:
    k = backend_settings.features.online_minutes
    reader = online_reader(backend_settings)
    try:
        assert online_reader(backend_settings) is reader  # one per process
        assert type(reader._provider.online_store).__name__ == ONLINE_STORES[backend_settings.profile]
        newest = written[written["minute"] > written["minute"].iloc[-1] - pd.Timedelta(minutes=k)]
        assert plain(reader.last()) == plain(newest)  # the online window: one lookup
        keys, tx, _, _, revisions = reader.window()
        assert keys == [int(m.timestamp()) for m in newest["minute"]] and tx == list(newest["tx_count"])
        assert revisions.count(3) == 1
        end = START + pd.Timedelta(minutes=52)  # minute keys: [49, 51], minute 50 absent
        assert plain(reader.last(3, end=end.to_pydatetime())) == plain(written.iloc[49:51])
        assert plain(reader.last(k + 5)) == plain(written.iloc[-(k + 4) :])  # beyond the window, one gap
    finally:
        reader.close()


def test_close_releases_what_the_reader_opened_and_a_later_read_reopens(
    backend_settings: Settings, written: pd.DataFrame
) -> None:
    before = held(backend_settings)
    reader = OnlineMinutes(backend_settings)
    assert plain(reader.last(1)) == plain(written.iloc[-1:])
    assert leaked(backend_settings, before), "an open reader holds a file or socket"
    reader.close()
    reader.close()  # a second close is harmless
    assert leaked(backend_settings, before) == {}
    assert plain(reader.last(1)) == plain(written.iloc[-1:])
    reader.close()
    assert leaked(backend_settings, before) == {}


def test_online_keys_count_size_and_trim_what_was_pushed(backend_settings: Settings, written: pd.DataFrame) -> None:
    """`OnlineKeys` (one class per online backend, picked by `online_keys`): the minutes held are
    the ones pushed, the oldest is the first, a trim drops exactly those before its bound and the
    reader still serves the window."""
    from rtml.features.online_keys import _BACKENDS, OnlineKeys, online_keys

    keys = online_keys(backend_settings)
    assert type(keys) is _BACKENDS[backend_settings.backend("online")]
    assert set(_BACKENDS.values()) == set(OnlineKeys.__subclasses__())  # every class is this suite's
    pushed = sorted(int(m.timestamp()) for m in written["minute"])
    assert sorted(keys.minutes()) == pushed
    size, rows, oldest = keys.stats()
    assert size > 0 and rows == len(pushed) and oldest == pushed[0] * 1000
    cut = pushed[20]
    assert keys.drop(cut) == 20
    assert sorted(keys.minutes()) == pushed[20:]
    assert keys.drop(cut) == 0  # nothing left below the bound: a repeat is a no-op
    reader = OnlineMinutes(backend_settings)
    try:
        assert int(reader.last()["minute"].iloc[-1].timestamp()) == pushed[-1]
    finally:
        reader.close()
