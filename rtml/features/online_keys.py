"""The online store's minute keys, per backend: how many, how big, how old, and retention.

Feast reads and writes the online store (SQLite or Redis, rendered into feature_store.yaml by
the profile's `online` backend); it has no API to list, size or drop keys by age, so each
backend's class does it on the store itself. Serving reads the online window and, for explicit
times, recent minute keys: nothing older than `retention.online_days` is read, and Redis' own
TTL runs on wall time, which a replay outruns. Each delete is one statement, so a crash in a
trim leaves some keys for the next run.
"""

from __future__ import annotations

import sqlite3
from abc import ABC, abstractmethod
from contextlib import closing

from rtml.config import Settings
from rtml.features.feast_repo import MINUTE_VIEW, online_redis_keys, project_name, repo_dir


def minute_of(entity_key: bytes) -> int:
    """The minute (epoch s) of a minute view's serialized entity key: its last 8 bytes, int64 LE."""
    return int.from_bytes(entity_key[-8:], "little", signed=True)


class OnlineKeys(ABC):
    """The minute keys of one pipeline's online store (the window key is never counted or dropped)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @abstractmethod
    def minutes(self) -> list[int]:
        """The minutes (epoch s) the store holds a key for."""

    @abstractmethod
    def drop(self, before_s: int) -> int:
        """Delete the minute keys before `before_s`; returns how many."""

    @abstractmethod
    def size(self) -> int:
        """Bytes the store holds for this pipeline."""

    def stats(self) -> tuple[int, int, int | None]:
        """(bytes, minute keys, oldest minute in ms or None): for `rtml status`."""
        held = self.minutes()
        return self.size(), len(held), min(held) * 1000 if held else None


class SqliteOnlineKeys(OnlineKeys):
    """Embedded: Feast's `online.db`, one table per feature view."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.path = repo_dir(settings) / "data" / "online.db"
        self.table = f"{project_name(settings)}_{MINUTE_VIEW}"

    def _keys(self, conn: sqlite3.Connection) -> list[bytes]:
        try:
            return [k for (k,) in conn.execute(f'SELECT DISTINCT entity_key FROM "{self.table}"')]
        except sqlite3.OperationalError:  # no minute written yet: Feast creates the table then
            return []

    def minutes(self) -> list[int]:
        if not self.path.exists():
            return []
        with closing(sqlite3.connect(self.path, timeout=30)) as conn:
            return [minute_of(k) for k in self._keys(conn)]

    def drop(self, before_s: int) -> int:
        if not self.path.exists():
            return 0
        with closing(sqlite3.connect(self.path, timeout=30)) as conn, conn:
            expired = [(k,) for k in self._keys(conn) if minute_of(k) < before_s]
            conn.executemany(f'DELETE FROM "{self.table}" WHERE entity_key = ?', expired)
        return len(expired)

    def size(self) -> int:
        return sum(p.stat().st_size for p in (self.path, self.path.with_name("online.db-wal")) if p.exists())


class RedisOnlineKeys(OnlineKeys):
    """Services: Feast's Redis keys, `<serialized entity key><project>`."""

    def _minute_keys(self) -> list[tuple[bytes, int]]:
        project = project_name(self.settings).encode()
        return [
            (k, minute_of(k.removesuffix(project))) for k in online_redis_keys(self.settings) if b"minute_key" in k
        ]

    def minutes(self) -> list[int]:
        return [m for _, m in self._minute_keys()]

    def drop(self, before_s: int) -> int:
        import redis

        old = [k for k, m in self._minute_keys() if m < before_s]
        client = redis.Redis.from_url(self.settings.redis_url)
        try:
            for start in range(0, len(old), 1000):
                client.delete(*old[start : start + 1000])
        finally:
            client.close()
        return len(old)

    def size(self) -> int:
        import redis

        client = redis.Redis.from_url(self.settings.redis_url)
        try:
            pipe = client.pipeline(transaction=False)
            for key in online_redis_keys(self.settings):
                pipe.memory_usage(key)
            return sum(int(n or 0) for n in pipe.execute())
        finally:
            client.close()


_BACKENDS: dict[str, type[OnlineKeys]] = {"sqlite": SqliteOnlineKeys, "redis": RedisOnlineKeys}


def online_keys(settings: Settings) -> OnlineKeys:
    """The minute keys of the profile's `online` backend."""
    return _BACKENDS[settings.backend("online")](settings)


def online_count(settings: Settings) -> int:
    """How many minutes the online store holds."""
    return len(online_keys(settings).minutes())


def trim_online(settings: Settings, before_ms: int) -> int:
    """Retention: delete the online minute keys before `before_ms` (the window key stays); returns how many."""
    return online_keys(settings).drop(before_ms // 1000)


def online_stats(settings: Settings) -> tuple[int, int, int | None]:
    """(bytes, minute keys, oldest minute in ms or None): for `rtml status`."""
    return online_keys(settings).stats()
