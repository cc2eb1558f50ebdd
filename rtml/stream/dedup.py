"""Dedup by transaction hash with a TTL that survives restarts (DynamoDB conditional puts in the AWS original).

Two batch-shaped calls, so ingestion pays one round trip per batch, not per event:
`unseen(hashes)` tells which are new (not marked within the TTL; the first of repeats within a
batch counts), and `mark(hashes)` records them once their events are durably in the stream.
Marking after the append is what makes a kill -9 lose nothing: an ingester killed between the
two re-sends the batch, and the aggregation engine counts a repeated tx_hash once. A mark inside
the TTL does not extend it (like Redis `SET NX EX`).

Embedded: `<data_dir>/dedup.sqlite`. Random-key B-tree inserts cost ~8 µs each at a million keys,
far from the 200k events/s target, so the table is an append-only log with one row per batch
(its new hashes, their expiry) and the membership test runs on an in-memory index of the
unexpired entries, rebuilt on open. Both calls first replay rows other processes appended since
this one last looked, so two ingesters on one data directory still agree.
Services: Redis keys `{namespace}:dedup:<hash>` set with `SET NX EX`, one pipeline per batch.
"""

from __future__ import annotations

import json
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import cast

from rtml.config import Settings


def _now_ms() -> int:
    return int(time.time() * 1000)


class Dedup(ABC):
    """Remembers which tx hashes were seen within `ttl_s`."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_ms = int(ttl_s * 1000)

    @abstractmethod
    def unseen(self, hashes: Sequence[str], now_ms: int | None = None) -> list[bool]:
        """True where a hash is not marked (the first of repeats within the batch counts); marks nothing."""

    @abstractmethod
    def mark(self, hashes: Sequence[str], now_ms: int | None = None) -> None:
        """Mark hashes seen for the TTL (call once their events are in the stream)."""

    @abstractmethod
    def purge(self, now_ms: int | None = None) -> int:
        """Drop expired entries (Redis expires its own keys); returns how many went."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Dedup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SqliteDedup(Dedup):
    def __init__(self, path: str, ttl_s: float) -> None:
        super().__init__(ttl_s)
        self._db = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        # One row per batch: the batch's new hashes as a JSON array, all with the same expiry.
        # AUTOINCREMENT: ids are never reused after a purge,
        # so every process's catch-up position (`_last_id`) stays valid.
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS seen_batches (id INTEGER PRIMARY KEY AUTOINCREMENT,"
            " expires INTEGER NOT NULL, hashes TEXT NOT NULL)"
        )
        self._expiry: dict[str, int] = {}
        self._last_id = 0
        self._db.execute("DELETE FROM seen_batches WHERE expires <= ?", (_now_ms(),))
        self._catch_up(_now_ms())

    def _catch_up(self, now_ms: int) -> None:
        """Replay, in order, the batches appended since we last looked (by us or another process)."""
        rows = self._db.execute(
            "SELECT id, expires, hashes FROM seen_batches WHERE id > ? ORDER BY id", (self._last_id,)
        ).fetchall()
        if not rows:
            return
        expiry = self._expiry
        for _, expires, hashes in rows:
            if expires > now_ms:
                for tx_hash in json.loads(hashes):
                    if expiry.get(tx_hash, 0) < expires:
                        expiry[tx_hash] = expires
        self._last_id = rows[-1][0]

    def _log(self, expires: int, hashes: list[str]) -> None:
        self._db.execute(
            "INSERT INTO seen_batches (expires, hashes) VALUES (?, ?)", (expires, json.dumps(hashes))
        )
        self._last_id = self._db.execute("SELECT last_insert_rowid()").fetchone()[0]

    def unseen(self, hashes: Sequence[str], now_ms: int | None = None) -> list[bool]:
        now = _now_ms() if now_ms is None else now_ms
        self._catch_up(now)
        get = self._expiry.get
        batch: set[str] = set()
        flags = []
        for tx_hash in hashes:
            new = get(tx_hash, 0) <= now and tx_hash not in batch
            batch.add(tx_hash)
            flags.append(new)
        return flags

    def mark(self, hashes: Sequence[str], now_ms: int | None = None) -> None:
        if not hashes:
            return
        now = _now_ms() if now_ms is None else now_ms
        expires = now + self.ttl_ms
        db = self._db
        db.execute("BEGIN IMMEDIATE")  # serialises marks with other processes
        try:
            self._catch_up(now)
            expiry = self._expiry
            fresh = [h for h in hashes if expiry.get(h, 0) <= now]
            if fresh:
                self._log(expires, fresh)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        for tx_hash in fresh:
            expiry[tx_hash] = expires

    def purge(self, now_ms: int | None = None) -> int:
        now = _now_ms() if now_ms is None else now_ms
        self._db.execute("DELETE FROM seen_batches WHERE expires <= ?", (now,))
        before = len(self._expiry)
        self._expiry = {h: e for h, e in self._expiry.items() if e > now}
        return before - len(self._expiry)

    def close(self) -> None:
        self._db.close()


class RedisDedup(Dedup):
    def __init__(self, url: str, namespace: str, ttl_s: float) -> None:
        import redis

        super().__init__(ttl_s)
        self._r = redis.Redis.from_url(url)
        self.prefix = f"{namespace}:dedup:"

    def unseen(self, hashes: Sequence[str], now_ms: int | None = None) -> list[bool]:
        # The TTL runs on Redis' clock; `now_ms` only matters to the embedded backend.
        if not hashes:
            return []
        found = cast(list[bytes | None], self._r.mget([self.prefix + h for h in hashes]))
        batch: set[str] = set()
        flags = []
        for tx_hash, value in zip(hashes, found, strict=True):
            flags.append(value is None and tx_hash not in batch)
            batch.add(tx_hash)
        return flags

    def mark(self, hashes: Sequence[str], now_ms: int | None = None) -> None:
        pipe = self._r.pipeline(transaction=False)
        for tx_hash in hashes:
            pipe.set(self.prefix + tx_hash, 1, nx=True, px=self.ttl_ms)
        pipe.execute()

    def purge(self, now_ms: int | None = None) -> int:
        return 0

    def close(self) -> None:
        self._r.close()


def open_dedup(settings: Settings) -> Dedup:
    """SQLite in the embedded profile, Redis in the services profile; TTL from `ingest.dedup_ttl_s`."""
    ttl = settings.ingest.dedup_ttl_s
    if settings.profile == "services":
        return RedisDedup(settings.redis_url, settings.namespace, ttl)
    return SqliteDedup(str(settings.path("dedup.sqlite")), ttl)
