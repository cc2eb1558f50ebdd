"""Dead letters and ingestion counters: what was refused (raw, reason, source, time) and how much flowed.

Both live in ingestion's own store, so a batch's refusals and its counts land together:
embedded, `<data_dir>/ingest.sqlite` (one transaction per batch); services, the Redis stream
`{namespace}:deadletters` and the hash `{namespace}:counters:ingest` (one MULTI/EXEC per batch).
Nothing refused can fill the disk: each letter keeps at most `ingest.dead_letter_max_bytes` of
the raw text, with the frame's full length in bytes and the SHA-256 of all of it
(`contracts.dead_letter`), for a person (`rtml dlq show`) or a fixed parser to look at again;
and the store keeps at most `retention.dead_letters_max_rows` letters, dropping the oldest in
the same transaction as the batch that overflowed it and counting them (`dead_letters_dropped`).
Each letter is stamped with ingestion's event clock when refused (`clock`; a refused frame has
no event time to trust, see rtml.sources.clock), and retention trims by that stamp against the
pipeline clock, so a replay ages its dead letters as live does. Stores from before the stamp
are upgraded in place: their letters read their ingest time as their clock.
"""

from __future__ import annotations

import os
import sqlite3
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from typing import cast

from rtml.config import Settings
from rtml.contracts import DeadLetter
from rtml.storage import Closeable

COUNTERS = ("received", "valid", "duplicates", "dead_letters", "appended")
# Letters dropped to keep within `retention.dead_letters_max_rows` (a counter of its own).
DROPPED = "dead_letters_dropped"


class IngestStore(Closeable):
    def __init__(self, max_rows: int) -> None:
        self.max_rows = max_rows

    @abstractmethod
    def record(self, dead: Sequence[DeadLetter], counts: Mapping[str, int], clock_ms: int | None = None) -> None:
        """Store a batch's dead letters stamped with `clock_ms` (the ingest clock; their ingest
        time when there is none yet), add its counts and drop the oldest beyond `max_rows`,
        atomically."""

    @abstractmethod
    def dead_letters(self, limit: int = 100, source: str | None = None) -> list[DeadLetter]:
        """The most recent dead letters, oldest first."""

    @abstractmethod
    def dead_letter_count(self) -> int: ...

    @abstractmethod
    def counters(self) -> dict[str, float]: ...

    @abstractmethod
    def trim_dead_letters(self, before_ms: int) -> int:
        """Retention: drop dead letters stamped before `before_ms` on the event clock; returns how many went."""

    @abstractmethod
    def dead_letter_stats(self) -> tuple[int, int, int | None]:
        """(bytes, dead letters, clock stamp of the oldest in ms or None): for `rtml status`."""


class SqliteIngestStore(IngestStore):
    def __init__(self, path: str, max_rows: int) -> None:
        super().__init__(max_rows)
        self._path = path
        self._db = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS dead_letters (
              id INTEGER PRIMARY KEY, raw TEXT NOT NULL, reason TEXT NOT NULL,
              source TEXT NOT NULL, ingest_time INTEGER NOT NULL,
              raw_bytes INTEGER NOT NULL DEFAULT -1, raw_sha256 TEXT NOT NULL DEFAULT '', clock INTEGER);
            CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value REAL NOT NULL);
            """
        )
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(dead_letters)")}
        for name, decl in (
            ("raw_bytes", "INTEGER NOT NULL DEFAULT -1"),  # a store from before letters were bounded
            ("raw_sha256", "TEXT NOT NULL DEFAULT ''"),
            ("clock", "INTEGER"),  # a store from before letters aged by event time
        ):
            if name not in columns:
                self._db.execute(f"ALTER TABLE dead_letters ADD COLUMN {name} {decl}")
        # One statement, so a crash leaves the whole upgrade done or not at all (then done again).
        self._db.execute("UPDATE dead_letters SET clock = ingest_time WHERE clock IS NULL")
        self._db.execute("CREATE INDEX IF NOT EXISTS dead_letters_clock ON dead_letters (clock)")

    def record(self, dead: Sequence[DeadLetter], counts: Mapping[str, int], clock_ms: int | None = None) -> None:
        db = self._db
        counts = dict(counts)
        db.execute("BEGIN IMMEDIATE")
        try:
            if dead:
                db.executemany(
                    "INSERT INTO dead_letters (raw, reason, source, ingest_time, raw_bytes, raw_sha256, clock)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        (d.raw, d.reason, d.source, d.ingest_time, d.raw_bytes, d.raw_sha256,
                         d.ingest_time if clock_ms is None else clock_ms)
                        for d in dead
                    ],
                )  # fmt: skip
                # Ids only grow (the newest is never deleted), so the newest `max_rows` are those
                # above last id - max_rows: an index range, not a count.
                last = db.execute("SELECT last_insert_rowid()").fetchone()[0]
                counts[DROPPED] = db.execute(
                    "DELETE FROM dead_letters WHERE id <= ?", (last - self.max_rows,)
                ).rowcount
            db.executemany(
                "INSERT INTO counters (name, value) VALUES (?, ?)"
                " ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                [(k, v) for k, v in counts.items() if v],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def dead_letters(self, limit: int = 100, source: str | None = None) -> list[DeadLetter]:
        rows = self._db.execute(
            "SELECT raw, reason, source, ingest_time, raw_bytes, raw_sha256, clock FROM dead_letters"
            " WHERE ? IS NULL OR source = ?"
            " ORDER BY id DESC LIMIT ?",
            (source, source, limit),
        ).fetchall()
        return [DeadLetter(*r) for r in reversed(rows)]

    def dead_letter_count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM dead_letters").fetchone()[0])

    def counters(self) -> dict[str, float]:
        values = dict.fromkeys(COUNTERS, 0.0)
        values.update(self._db.execute("SELECT name, value FROM counters").fetchall())
        return values

    def trim_dead_letters(self, before_ms: int) -> int:
        return int(self._db.execute("DELETE FROM dead_letters WHERE clock < ?", (before_ms,)).rowcount)

    def dead_letter_stats(self) -> tuple[int, int, int | None]:
        rows, oldest = self._db.execute("SELECT count(*), min(clock) FROM dead_letters").fetchone()
        return _file_bytes(self._path), int(rows), oldest

    def close(self) -> None:
        self._db.close()


# Trim a stream to its newest ARGV[1] entries and count what went, in one step.
_CAP = """
local n = redis.call('XTRIM', KEYS[1], 'MAXLEN', tonumber(ARGV[1]))
if n > 0 then redis.call('HINCRBYFLOAT', KEYS[2], ARGV[2], n) end
return n
"""


class RedisIngestStore(IngestStore):
    """Entries of `{namespace}:deadletters` carry `clock` (entries from before it read their
    `ingest_time`). They arrive in about clock order (the engine's clock outliers carry its
    watermark, a little behind ingestion's clock), so retention trims a prefix."""

    def __init__(self, url: str, namespace: str, max_rows: int) -> None:
        import redis

        super().__init__(max_rows)
        self._r = redis.Redis.from_url(url)
        self.dlq_key = f"{namespace}:deadletters"
        self.counters_key = f"{namespace}:counters:ingest"
        self._cap = self._r.register_script(_CAP)

    def record(self, dead: Sequence[DeadLetter], counts: Mapping[str, int], clock_ms: int | None = None) -> None:
        pipe = self._r.pipeline(transaction=True)
        for d in dead:
            pipe.xadd(
                self.dlq_key,
                {
                    "raw": d.raw,
                    "reason": d.reason,
                    "source": d.source,
                    "ingest_time": d.ingest_time,
                    "raw_bytes": d.raw_bytes,
                    "raw_sha256": d.raw_sha256,
                    "clock": d.ingest_time if clock_ms is None else clock_ms,
                },
            )
        if dead:
            self._cap(keys=[self.dlq_key, self.counters_key], args=[self.max_rows, DROPPED], client=pipe)
        for name, value in counts.items():
            if value:
                pipe.hincrbyfloat(self.counters_key, name, value)
        pipe.execute()

    def dead_letters(self, limit: int = 100, source: str | None = None) -> list[DeadLetter]:
        found: list[DeadLetter] = []
        high = "+"
        while len(found) < limit:
            entries = self._r.xrevrange(self.dlq_key, max=high, min="-", count=1000)
            if not entries:
                break
            for _, f in entries:  # type: ignore[union-attr]
                if source is None or f[b"source"].decode() == source:
                    found.append(
                        DeadLetter(
                            f[b"raw"].decode(),
                            f[b"reason"].decode(),
                            f[b"source"].decode(),
                            int(f[b"ingest_time"]),
                            int(f.get(b"raw_bytes", -1)),
                            f.get(b"raw_sha256", b"").decode(),
                            _clock(f),
                        )
                    )
                    if len(found) == limit:
                        break
            high = f"({entries[-1][0].decode()}"  # type: ignore[index]
        return found[::-1]

    def dead_letter_count(self) -> int:
        return int(self._r.xlen(self.dlq_key))  # type: ignore[arg-type]

    def counters(self) -> dict[str, float]:
        values = dict.fromkeys(COUNTERS, 0.0)
        stored = self._r.hgetall(self.counters_key)
        values.update({k.decode(): float(v) for k, v in stored.items()})  # type: ignore[union-attr]
        return values

    def trim_dead_letters(self, before_ms: int) -> int:
        # Walk from the oldest to the first letter stamped at or after the cutoff and trim the
        # prefix before it: reads only what goes (plus one chunk), in one XTRIM.
        low, keep_from = "-", None
        while keep_from is None:
            entries = cast(list[tuple[bytes, dict[bytes, bytes]]], self._r.xrange(self.dlq_key, min=low, count=100))
            if not entries:
                break
            for entry_id, fields in entries:
                if _clock(fields) >= before_ms:
                    keep_from = entry_id.decode()
                    break
            low = f"({entries[-1][0].decode()}"
        if keep_from is None:  # every letter is older than the cutoff
            return int(self._r.xtrim(self.dlq_key, maxlen=0, approximate=False))  # type: ignore[arg-type]
        return int(self._r.xtrim(self.dlq_key, minid=keep_from, approximate=False))  # type: ignore[arg-type]

    def dead_letter_stats(self) -> tuple[int, int, int | None]:
        rows = self.dead_letter_count()
        size = int(self._r.memory_usage(self.dlq_key) or 0) if rows else 0  # type: ignore[arg-type]
        first = cast(list[tuple[bytes, dict[bytes, bytes]]], self._r.xrange(self.dlq_key, min="-", max="+", count=1))
        return size, rows, _clock(first[0][1]) if first else None

    def close(self) -> None:
        self._r.close()


def _clock(fields: Mapping[bytes, bytes]) -> int:
    return int(fields.get(b"clock", fields[b"ingest_time"]))


def _file_bytes(path: str) -> int:
    """A SQLite database's size on disk, its write-ahead log included."""
    return sum(os.path.getsize(p) for p in (path, f"{path}-wal") if os.path.exists(p))


def open_ingest_store(settings: Settings) -> IngestStore:
    """The profile's `dead_letters` backend: SQLite under the data directory, or Redis."""
    cap = settings.retention.dead_letters_max_rows
    if settings.backend("dead_letters") == "redis":
        return RedisIngestStore(settings.redis_url, settings.namespace, cap)
    return SqliteIngestStore(str(settings.path("ingest.sqlite")), cap)
