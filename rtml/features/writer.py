"""The feature store's writer: the aggregation engine's minutes reach both stores idempotently.

Order of a write: the offline upsert first (latest revision wins, see offline.py), then an
online push of the *winning* rows, so a stale retry re-sends the stored latest revision rather
than its own; then the online window (the last `online_minutes` minutes as one row of arrays)
is rebuilt from the offline table and pushed, stamped with the write time. Redis keeps the newest event timestamp per key
and skips anything not newer, so the pushed timestamp is the window end plus `revision` ms:
a newer revision of a minute replaces the old one, a retried push changes nothing. Readers
take `event_time` from the minute key, never from this online timestamp.

A writer killed at any point and retried converges: each offline day is replaced atomically
(or upserted in one transaction) and online writes are idempotent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd

from rtml.aggregate.sinks import MinuteSink
from rtml.config import Settings
from rtml.contracts import MinuteFeatures
from rtml.features.dataset import minutes_frame
from rtml.features.feast_repo import CHAIN_ID, PUSH_SOURCE, WINDOW_PUSH, ensure_repo, import_feast
from rtml.features.offline import (
    OfflineMinutes,
    latest_rows,
    open_offline,
    to_source_frame,
    to_spool,
)
from rtml.spool import Record, Spool, unreachable
from rtml.storage import open_counters

if TYPE_CHECKING:
    from feast import FeatureStore

log = logging.getLogger(__name__)
# Seconds between two tries of an idle flush (rtml.outage.BACKOFF_MAX_S's bound).
FLUSH_RETRY_S = 2.0


class FeatureStoreSink(MinuteSink):
    """A MinuteSink (see rtml.aggregate.sinks): `upsert(rows)` into the Feast online + offline stores.

    Opening is lazy by default: Feast (a 5 s import) is loaded at the first write, not when the
    composition root builds the engine's sinks; `open_now` opens it at once (long-running engines).
    """

    name = "feature_store"

    def __init__(self, settings: Settings, store: FeatureStore | None = None, *, open_now: bool = False) -> None:
        self.settings = settings
        self._store = store
        self._offline: OfflineMinutes | None = None
        self._unpushed: set[int] = set()  # minute keys whose online push waits for PostgreSQL
        # Monotonic time before which `flush` does not try PostgreSQL again (an idle engine polls
        # every few hundred ms; a try against a server that is down costs a connect timeout).
        self._next_flush = 0.0
        if open_now:
            try:
                self.store, self.offline  # noqa: B018 - open both stores now, not at the first write
            except Exception as exc:  # an engine starting during a PostgreSQL outage still starts
                if not unreachable(exc):
                    raise
                log.warning("feature store unreachable (%s): opened at the first write", exc)

    @property
    def store(self) -> FeatureStore:
        if self._store is None:
            self._store = ensure_repo(self.settings)
        return self._store

    @property
    def offline(self) -> OfflineMinutes:
        if self._offline is None:
            self._offline = open_offline(self.settings)
        return self._offline

    def upsert(self, rows: Sequence[MinuteFeatures]) -> None:
        if rows:
            self.write_frame(minutes_frame(list(rows)))

    def write_frame(self, minutes: pd.DataFrame) -> int:
        """Upsert a minutes frame (MinuteFeatures columns); returns the rows pushed online.

        Services, PostgreSQL unreachable: the rows are spooled (rtml.spool) and pushed online
        as they are (the engine's latest revisions), the online window rebuilt from them and
        the engine's own table; the engine's outbox is cleared, so aggregation goes on. The
        next write drains the spool first and pushes its winners online again. A push that
        fails during the outage is retried with that drain (in memory: a crash before it
        leaves those minutes' online rows to the window rebuild, which serving reads).
        """
        if minutes.empty:
            return 0
        source = to_source_frame(minutes)
        spool = self.offline.spool()
        try:
            if spool is not None and (self._unpushed or spool.pending()):
                self._drain(spool)
            winners = self.offline.upsert(source)
        except Exception as exc:
            if spool is None or not unreachable(exc):
                raise
            spool.put(to_spool(source))
            log.warning("offline store unreachable (%s): %d minutes spooled", exc, len(source))
            return self._push_during_outage(source)
        finally:
            if spool is not None:
                spool.close()
        pushed = self.push_online(winners)
        _count(self.settings, rows_written=len(minutes), writes=1, online_rows_pushed=pushed)
        return pushed

    def flush(self) -> None:
        """Drain the spool while the stream is quiet (the replay ended, the feed paused): the next
        write would, but none may come. At most one try per FLUSH_RETRY_S while PostgreSQL is away."""
        if time.monotonic() < self._next_flush or (spool := self.offline.spool()) is None:
            return
        self._next_flush = time.monotonic() + FLUSH_RETRY_S
        try:
            if self._unpushed or spool.pending():
                self._drain(spool)
        except Exception as exc:
            if not unreachable(exc):
                raise
        finally:
            spool.close()

    def _drain(self, spool: Spool) -> None:
        """Write the spooled rows offline, then push their winners online (with any the outage
        could not push)."""
        offline = self.offline
        drained: list[int] = []

        def write(records: list[Record]) -> None:
            offline.write_spooled(records)
            drained.extend(int(key) for key, _ in records)

        spool.drain(write)
        keys = sorted(set(drained) | self._unpushed)
        if keys:
            start = pd.Timestamp(keys[0], unit="s", tz="UTC")
            rows = offline.read(start.to_pydatetime(), (pd.Timestamp(keys[-1], unit="s", tz="UTC") + pd.Timedelta(minutes=1)).to_pydatetime())
            self.push_online(rows[rows["minute_key"].isin(keys)])
            self._unpushed.clear()

    def _push_during_outage(self, source: pd.DataFrame) -> int:
        """Online push of rows PostgreSQL could not take: the window comes from these rows and
        the engine's table, not from the offline store."""
        import_feast()
        from feast.data_source import PushMode

        from rtml.aggregate.sinks import read_minutes

        n = self.settings.features.online_minutes
        first = pd.Timestamp(source["minute"].max()) - pd.Timedelta(minutes=n - 1)
        engine = minutes_frame(list[object](read_minutes(self.settings, first.to_pydatetime())))
        recent = latest_rows(pd.concat([to_source_frame(engine), source]) if len(engine) else source)
        recent = recent[recent["minute"] >= first]
        try:
            frame = source.sort_values("minute_key").reset_index(drop=True)
            frame["event_time"] = frame["event_time"] + pd.to_timedelta(frame["revision"], unit="ms")
            self.store.push(PUSH_SOURCE, frame, to=PushMode.ONLINE)
            self.store.push(WINDOW_PUSH, self._window_frame(recent), to=PushMode.ONLINE)
        except Exception as exc:  # Feast's registry is in PostgreSQL too: its cache lasts 60 s
            if not unreachable(exc):
                raise
            self._unpushed.update(int(k) for k in source["minute_key"])
            log.warning("online push deferred until PostgreSQL answers: %s", exc)
            return 0
        return len(frame)

    def push_online(self, source_rows: pd.DataFrame) -> int:
        """Push offline-table rows to the online store, then rebuild the online window."""
        import_feast()
        from feast.data_source import PushMode

        frame = source_rows.sort_values("minute_key").reset_index(drop=True)
        frame["event_time"] = frame["event_time"] + pd.to_timedelta(frame["revision"], unit="ms")
        self.store.push(PUSH_SOURCE, frame, to=PushMode.ONLINE)
        self.store.push(WINDOW_PUSH, self._window_row(), to=PushMode.ONLINE)
        return len(frame)

    def _window_row(self) -> pd.DataFrame:
        """The last `online_minutes` stored minutes as one row of arrays, stamped with the write time."""
        return self._window_frame(self.offline.recent(self.settings.features.online_minutes))

    @staticmethod
    def _window_frame(recent: pd.DataFrame) -> pd.DataFrame:
        recent = recent.sort_values("minute_key")
        return pd.DataFrame(
            {
                "chain_id": [CHAIN_ID],
                "minute_keys": [recent["minute_key"].astype("int64").tolist()],
                "tx_counts": [recent["tx_count"].astype("int64").tolist()],
                "fee_totals_sat": [recent["fee_total_sat"].astype("int64").tolist()],
                "fee_avgs_sat": [recent["fee_avg_sat"].astype("float64").tolist()],
                "revisions": [recent["revision"].astype("int64").tolist()],
                "event_time": [pd.Timestamp.now(tz="UTC")],
            }
        )

    def close(self) -> None:
        if self._offline is not None:
            self._offline.close()
        self._offline = None


def _count(settings: Settings, **increments: int) -> None:
    """Add to the persisted writer counters and stamp the write time (`storage.open_counters`: a
    SQLite table embedded, the Redis hash `<namespace>:counters:features` in services). The sums
    are one atomic step, the stamp a second: a crash between them leaves the previous stamp."""
    with open_counters(settings, "features") as counters:
        counters.add(increments)
        counters.set({"last_write_time_s": time.time()})


def feature_counters(settings: Settings) -> dict[str, float]:
    """The feature store's counters: writes, rows written/pushed, offline rows vs minutes, freshness.

    `offline_rows` == `offline_minutes` unless idempotency broke; `head_lag_s` is the age of the
    newest stored minute's end (the feature freshness serving sees).
    """
    out = dict.fromkeys(("writes", "rows_written", "online_rows_pushed", "last_write_time_s"), 0.0)
    with open_counters(settings, "features") as counters:
        out.update(counters.read())
    offline = open_offline(settings)
    try:
        rows, distinct = offline.count()
        recent = offline.recent(1)
    finally:
        offline.close()
    out["offline_rows"], out["offline_minutes"] = float(rows), float(distinct)
    out["head_lag_s"] = (
        time.time() - pd.Timestamp(recent["event_time"].iloc[-1]).timestamp() if len(recent) else 0.0
    )
    return out
