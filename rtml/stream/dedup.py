"""Dedup by transaction hash with a TTL on event time that survives restarts (DynamoDB conditional puts in the AWS original).

The TTL runs on ingestion's guarded event clock (`rtml.sources.clock.IngestClock.elapsed`: event
time, a real gap counting as at most `window.max_jump_s`), never on wall time: an entry expires
once that clock passes the clock at its marking + `ingest.dedup_ttl_s`,
so a max-speed replay of a month holds one TTL's worth of entries at a time, as live does,
instead of every hash it wrote within three wall hours. For events in order that is their event
time + TTL. An event's own time is not used: one dated ahead of the clock cannot pin its entry,
and one dated far behind it (a mempool transaction first seen days ago: the 2020 recording's
first 200 frames span 3.4 days) is still deduplicated for a whole TTL after it was seen.

Two batch-shaped calls, so ingestion pays one round trip per batch, not per event:
`unseen(hashes, clock)` tells which are new (not marked, or expired; the first of repeats within
a batch counts), and `mark(hashes, clock)` records them once their events are durably in the
stream. Marking after the append is what makes a kill -9 lose nothing: an ingester killed
between the two re-sends the batch, and the aggregation engine counts a repeated tx_hash once.
Only unseen hashes are marked, so a mark inside the TTL never extends it.

Embedded: `<data_dir>/dedup.sqlite`. Random-key B-tree inserts cost ~8 µs each at a million keys,
far from the 200k events/s target, so the table is an append-only log with one row per batch
(its new hashes and their expiry, the clock + TTL) and the membership test runs on an in-memory
index of the unexpired entries, rebuilt on open. Both calls first replay rows other processes
appended since this one last looked, so two ingesters on one data directory still agree. The
clock and the ingest event clock are kept beside the log (table `clock`), committed with each
mark, for the next ingester to resume from.
Services: Redis key `{namespace}:dedup:<hash>` holds the clock at its marking (ms), with no
Redis TTL; the set `{namespace}:dedup:b:<n>` lists the hashes marked in bucket n of the clock
(TTL/12 each), the sorted set `{namespace}:dedup:buckets` the buckets, and the hash
`{namespace}:dedup:clock` the clock (`ttl`) and the ingest event clock (`event`). `purge` deletes the keys of buckets wholly expired (one Lua
call per chunk, skipping hashes marked again since), then the bucket. A mark writes the bucket
first and the keys second, so a crash between leaves at worst a bucket naming keys not
written, never a key no bucket names.
"""

from __future__ import annotations

import json
import sqlite3
from abc import abstractmethod
from collections import deque
from collections.abc import Sequence
from itertools import repeat
from typing import cast

from rtml.config import Settings
from rtml.storage import Closeable

# Redis buckets per TTL: memory holds at most 1 + 1/12 TTL's worth of entries between purges.
BUCKETS_PER_TTL = 12
# How many of a bucket's hashes one Lua call deletes (keeps each call short for other clients).
_PURGE_CHUNK = 1000
_PURGE_BUCKET = """
local n = 0
for _, h in ipairs(redis.call('SPOP', KEYS[1], tonumber(ARGV[3]))) do
  local key = ARGV[1] .. h
  local marked = redis.call('GET', key)
  if marked and tonumber(marked) <= tonumber(ARGV[2]) then
    redis.call('DEL', key)
    n = n + 1
  end
end
return n
"""


class Dedup(Closeable):
    """Remembers which tx hashes were seen within `ttl_s` of event time on the ingest clock."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_ms = int(ttl_s * 1000)
        # The TTL clock and the ingest event clock as last committed (None before any event):
        # where a new ingester resumes.
        self.clock_ms: int | None = None
        self.event_ms: int | None = None

    @abstractmethod
    def unseen(self, hashes: Sequence[str], clock_ms: int) -> list[bool]:
        """True where a hash is not marked or has expired by `clock_ms` (the first of repeats
        within the batch counts); marks nothing."""

    @abstractmethod
    def mark(self, hashes: Sequence[str], clock_ms: int, event_ms: int | None = None) -> None:
        """Mark unseen hashes at `clock_ms` once their events are in the stream; keep the clocks."""

    @abstractmethod
    def purge(self, clock_ms: int) -> int:
        """Drop entries expired by `clock_ms`; returns how many went."""

    @abstractmethod
    def size(self) -> int:
        """Entries held (expired ones not yet purged included): what memory is spent on."""


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
        self._db.execute("BEGIN IMMEDIATE")  # one process upgrades; the others then see the clock
        try:
            if not self._db.execute("SELECT 1 FROM sqlite_master WHERE name = 'clock'").fetchone():
                # New, or a log from when the TTL ran on wall time, whose expiries cannot be read
                # as event time: dropped (at most one wall TTL of marks; a re-sent event whose
                # window is open still counts once in the engine, one whose window is final is late).
                self._db.execute("DELETE FROM seen_batches")
                self._db.execute(
                    "CREATE TABLE clock (id INTEGER PRIMARY KEY CHECK (id = 0), ttl INTEGER NOT NULL, event INTEGER)"
                )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        found = self._db.execute("SELECT ttl, event FROM clock").fetchone()
        if found is not None:
            self.clock_ms, self.event_ms = found
        # hash -> expiry, and the marked batches oldest first, (expires, hashes).
        self._expiry: dict[str, int] = {}
        self._batches: deque[tuple[int, list[str]]] = deque()
        self._last_id = 0
        if self.clock_ms is not None:
            self._db.execute("DELETE FROM seen_batches WHERE expires <= ?", (self.clock_ms,))
        self._catch_up()

    def _catch_up(self) -> None:
        """Replay, in order, the batches appended since we last looked (by us or another process)."""
        rows = self._db.execute(
            "SELECT id, expires, hashes FROM seen_batches WHERE id > ? ORDER BY id", (self._last_id,)
        ).fetchall()
        if not rows:
            return
        expiry = self._expiry
        for _, expires, hashes in rows:
            listed = json.loads(hashes)
            for tx_hash in listed:
                if expiry.get(tx_hash, 0) < expires:
                    expiry[tx_hash] = expires
            self._batches.append((expires, listed))
        self._last_id = rows[-1][0]

    def unseen(self, hashes: Sequence[str], clock_ms: int) -> list[bool]:
        self._catch_up()
        get = self._expiry.get
        batch: set[str] = set()
        flags = []
        for tx_hash in hashes:
            new = get(tx_hash, 0) <= clock_ms and tx_hash not in batch
            batch.add(tx_hash)
            flags.append(new)
        return flags

    def mark(self, hashes: Sequence[str], clock_ms: int, event_ms: int | None = None) -> None:
        expires = clock_ms + self.ttl_ms
        db = self._db
        db.execute("BEGIN IMMEDIATE")  # serialises marks with other processes
        try:
            self._catch_up()
            get = self._expiry.get
            fresh = list(hashes)
            # The usual batch (nobody else marked any of it since the check) costs a C-level max.
            if fresh and max(map(get, fresh, repeat(0))) > clock_ms:
                fresh = [h for h in fresh if get(h, 0) <= clock_ms]
            if fresh:
                db.execute("INSERT INTO seen_batches (expires, hashes) VALUES (?, ?)", (expires, json.dumps(fresh)))
                self._last_id = db.execute("SELECT last_insert_rowid()").fetchone()[0]
            if self.clock_ms is None or clock_ms > self.clock_ms or event_ms != self.event_ms:
                db.execute("INSERT OR REPLACE INTO clock (id, ttl, event) VALUES (0, ?, ?)", (clock_ms, event_ms))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.clock_ms, self.event_ms = max(clock_ms, self.clock_ms or clock_ms), event_ms
        if fresh:
            self._expiry.update(dict.fromkeys(fresh, expires))
            self._batches.append((expires, fresh))

    def purge(self, clock_ms: int) -> int:
        self._db.execute("DELETE FROM seen_batches WHERE expires <= ?", (clock_ms,))
        expiry, batches = self._expiry, self._batches
        before = len(expiry)
        while batches and batches[0][0] <= clock_ms:
            for tx_hash in batches.popleft()[1]:
                if expiry.get(tx_hash, clock_ms + 1) <= clock_ms:  # not marked again since
                    del expiry[tx_hash]
        return before - len(expiry)

    def size(self) -> int:
        return len(self._expiry)

    def close(self) -> None:
        self._db.close()


class RedisDedup(Dedup):
    def __init__(self, url: str, namespace: str, ttl_s: float) -> None:
        import redis

        super().__init__(ttl_s)
        self._r = redis.Redis.from_url(url)
        self.prefix = f"{namespace}:dedup:"
        self.buckets_key = f"{namespace}:dedup:buckets"
        self.clock_key = f"{namespace}:dedup:clock"
        self.bucket_ms = max(1, self.ttl_ms // BUCKETS_PER_TTL)
        self._purge_bucket = self._r.register_script(_PURGE_BUCKET)
        found = cast(dict[bytes, bytes], self._r.hgetall(self.clock_key))
        if b"ttl" in found:
            self.clock_ms = int(found[b"ttl"])
            self.event_ms = int(found[b"event"]) if b"event" in found else None

    def _bucket_key(self, n: int) -> str:
        return f"{self.prefix}b:{n}"  # never a hash key: those are 64 hex digits

    def unseen(self, hashes: Sequence[str], clock_ms: int) -> list[bool]:
        # Keys of the wall-TTL layout (value 1, Redis EX) read as expired and age out by their EX.
        if not hashes:
            return []
        found = cast(list[bytes | None], self._r.mget([self.prefix + h for h in hashes]))
        live_after = clock_ms - self.ttl_ms  # alive iff marked after clock - TTL
        batch: set[str] = set()
        flags = []
        for tx_hash, marked in zip(hashes, found, strict=True):
            flags.append((marked is None or int(marked) <= live_after) and tx_hash not in batch)
            batch.add(tx_hash)
        return flags

    def mark(self, hashes: Sequence[str], clock_ms: int, event_ms: int | None = None) -> None:
        pipe = self._r.pipeline(transaction=False)
        if hashes:
            n = clock_ms // self.bucket_ms
            pipe.zadd(self.buckets_key, {str(n): n})
            pipe.sadd(self._bucket_key(n), *hashes)
            pipe.mset(dict.fromkeys([self.prefix + h for h in hashes], clock_ms))
        if self.clock_ms is None or clock_ms > self.clock_ms or event_ms != self.event_ms:
            pipe.hset(self.clock_key, mapping={"ttl": clock_ms, **({} if event_ms is None else {"event": event_ms})})
        pipe.execute()
        self.clock_ms, self.event_ms = max(clock_ms, self.clock_ms or clock_ms), event_ms

    def purge(self, clock_ms: int) -> int:
        cut = clock_ms - self.ttl_ms
        # Bucket n holds marks in [n * width, (n + 1) * width): all expired once its end <= cut + 1.
        due = (cut + 1) // self.bucket_ms - 1
        dropped = 0
        for member in cast(list[bytes], self._r.zrangebyscore(self.buckets_key, "-inf", due)):
            key = self._bucket_key(int(member))
            while self._r.exists(key):
                dropped += int(self._purge_bucket(keys=[key], args=[self.prefix, cut, _PURGE_CHUNK]))  # type: ignore[arg-type]
            self._r.zrem(self.buckets_key, member)
        return dropped

    def size(self) -> int:
        return sum(1 for _ in self._r.scan_iter(match=f"{self.prefix}{'?' * 64}", count=1000))

    def close(self) -> None:
        self._r.close()


def open_dedup(settings: Settings) -> Dedup:
    """The profile's `dedup` backend (sqlite or redis); TTL from `ingest.dedup_ttl_s`."""
    ttl = settings.ingest.dedup_ttl_s
    if settings.backend("dedup") == "redis":
        return RedisDedup(settings.redis_url, settings.namespace, ttl)
    return SqliteDedup(str(settings.path("dedup.sqlite")), ttl)
