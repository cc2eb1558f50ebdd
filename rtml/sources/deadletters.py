"""Dead letters and ingestion counters: what was refused (raw, reason, source, time) and how much flowed.

Both live in ingestion's own store, so a batch's refusals and its counts land together:
embedded, `<data_dir>/ingest.sqlite` (one transaction per batch); services, the Redis stream
`{namespace}:deadletters` and the hash `{namespace}:counters:ingest` (one MULTI/EXEC per batch).
Nothing refused is ever dropped, and nothing refused can fill the disk: each letter keeps at
most `ingest.dead_letter_max_bytes` of the raw text, with the frame's full length in bytes and
the SHA-256 of all of it (`contracts.dead_letter`), for a person (`rtml dlq show`) or a fixed
parser to look at again.
"""

from __future__ import annotations

import os
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence

from rtml.config import Settings
from rtml.contracts import DeadLetter

COUNTERS = ("received", "valid", "duplicates", "dead_letters", "appended")


class IngestStore(ABC):
    @abstractmethod
    def record(self, dead: Sequence[DeadLetter], counts: Mapping[str, int]) -> None:
        """Store a batch's dead letters and add its counts, atomically."""

    @abstractmethod
    def dead_letters(self, limit: int = 100, source: str | None = None) -> list[DeadLetter]:
        """The most recent dead letters, oldest first."""

    @abstractmethod
    def dead_letter_count(self) -> int: ...

    @abstractmethod
    def counters(self) -> dict[str, float]: ...

    @abstractmethod
    def trim_dead_letters(self, before_ms: int) -> int:
        """Retention: drop dead letters received before `before_ms` (a refused frame has no event
        time to trust, so its ingest time stands in); returns how many went."""

    @abstractmethod
    def dead_letter_stats(self) -> tuple[int, int, int | None]:
        """(bytes, dead letters, ingest time of the oldest in ms or None): for `rtml status`."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> IngestStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SqliteIngestStore(IngestStore):
    def __init__(self, path: str) -> None:
        self._path = path
        self._db = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS dead_letters (
              id INTEGER PRIMARY KEY, raw TEXT NOT NULL, reason TEXT NOT NULL,
              source TEXT NOT NULL, ingest_time INTEGER NOT NULL,
              raw_bytes INTEGER NOT NULL DEFAULT -1, raw_sha256 TEXT NOT NULL DEFAULT '');
            CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value REAL NOT NULL);
            """
        )
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(dead_letters)")}
        for name, decl in (
            ("raw_bytes", "INTEGER NOT NULL DEFAULT -1"),
            ("raw_sha256", "TEXT NOT NULL DEFAULT ''"),
        ):
            if name not in columns:  # a store from before dead letters were bounded
                self._db.execute(f"ALTER TABLE dead_letters ADD COLUMN {name} {decl}")

    def record(self, dead: Sequence[DeadLetter], counts: Mapping[str, int]) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            if dead:
                db.executemany(
                    "INSERT INTO dead_letters (raw, reason, source, ingest_time, raw_bytes, raw_sha256)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    [(d.raw, d.reason, d.source, d.ingest_time, d.raw_bytes, d.raw_sha256) for d in dead],
                )
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
            "SELECT raw, reason, source, ingest_time, raw_bytes, raw_sha256 FROM dead_letters"
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
        return int(self._db.execute("DELETE FROM dead_letters WHERE ingest_time < ?", (before_ms,)).rowcount)

    def dead_letter_stats(self) -> tuple[int, int, int | None]:
        rows, oldest = self._db.execute("SELECT count(*), min(ingest_time) FROM dead_letters").fetchone()
        return _file_bytes(self._path), int(rows), oldest

    def close(self) -> None:
        self._db.close()


class RedisIngestStore(IngestStore):
    def __init__(self, url: str, namespace: str) -> None:
        import redis

        self._r = redis.Redis.from_url(url)
        self.dlq_key = f"{namespace}:deadletters"
        self.counters_key = f"{namespace}:counters:ingest"

    def record(self, dead: Sequence[DeadLetter], counts: Mapping[str, int]) -> None:
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
                },
            )
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
        # Entry ids start with the append time (ms), which is within a batch of the ingest time.
        return int(self._r.xtrim(self.dlq_key, minid=f"{max(0, before_ms)}-0", approximate=False))  # type: ignore[arg-type]

    def dead_letter_stats(self) -> tuple[int, int, int | None]:
        rows = self.dead_letter_count()
        size = int(self._r.memory_usage(self.dlq_key) or 0) if rows else 0  # type: ignore[arg-type]
        first = self._r.xrange(self.dlq_key, min="-", max="+", count=1)
        return size, rows, int(first[0][1][b"ingest_time"]) if first else None  # type: ignore[index]

    def close(self) -> None:
        self._r.close()


def _file_bytes(path: str) -> int:
    """A SQLite database's size on disk, its write-ahead log included."""
    return sum(os.path.getsize(p) for p in (path, f"{path}-wal") if os.path.exists(p))


def open_ingest_store(settings: Settings) -> IngestStore:
    """SQLite under the data directory (embedded) or Redis (services)."""
    if settings.profile == "services":
        return RedisIngestStore(settings.redis_url, settings.namespace)
    return SqliteIngestStore(str(settings.path("ingest.sqlite")))
