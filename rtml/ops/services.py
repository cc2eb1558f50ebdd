"""The services profile's services, checked rather than assumed: reachable, persistent, fast.

Redis Streams are a durable log only when Redis persists every append: with AOF on
(`appendonly yes`) and fsynced every second or every write (`appendfsync everysec|always`).
Without it a Redis restart loses the stream (the engine then recovers what it can and records a
`stream.reset` event, but events nobody had consumed are gone). So `rtml up --profile services`
refuses such a Redis, or one whose settings it cannot read (CONFIG renamed or denied), unless
`stream.allow_volatile_redis = true`; `rtml status` shows every service's health and warns.
PostgreSQL is durable when commits are (`fsync` on, `synchronous_commit` not off): shown and
warned about, never refused (rtml's PostgreSQL writes are idempotent upserts, re-done on loss).

Nothing here writes to a service; a probe that fails says why in `error` (never a password).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

from rtml.config import Settings, without_secrets

FIX = "set `appendonly yes` and `appendfsync everysec` (or `always`) in redis.conf (or CONFIG SET)"
ALLOW = "or accept losing the stream on a Redis restart with stream.allow_volatile_redis = true"


@dataclass
class ServiceHealth:
    """One service as `rtml status --json` lists it (key `services`)."""

    name: str  # redis | postgres
    url: str  # where it lives, without user or password
    reachable: bool
    persistence: str | None  # e.g. "aof everysec", "none", "unknown (...)"
    durable: bool | None  # None: could not be read
    latency_ms: float | None  # one PING / SELECT 1 round trip
    error: str | None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _clean(error: BaseException, url: str) -> str:
    """The error's text, with the URL's password (if a library echoed it) blanked."""
    text = f"{type(error).__name__}: {error}".strip()
    password = urlsplit(url).password
    return text.replace(password, "***") if password else text


def check_redis(url: str, timeout: float = 2.0) -> ServiceHealth:
    import redis

    health = ServiceHealth("redis", without_secrets(url), False, None, None, None, None)
    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        client.ping()  # connects
        start = time.perf_counter()
        client.ping()
        health.latency_ms = round((time.perf_counter() - start) * 1000, 3)
        health.reachable = True
        try:
            conf: dict[str, str] = client.config_get("append*")  # type: ignore[assignment]
        except redis.ResponseError as exc:  # CONFIG renamed or denied (managed Redis, ACLs)
            aof = client.info("persistence").get("aof_enabled")  # type: ignore[union-attr]
            health.persistence = f"unknown (CONFIG GET refused: {exc}; INFO says aof_enabled:{aof})"
            return health
        appendonly, fsync = conf.get("appendonly", "no"), conf.get("appendfsync", "?")
        if appendonly == "yes":
            health.persistence = f"aof {fsync}" if fsync != "no" else "aof, fsync left to the OS (appendfsync no)"
            health.durable = fsync in ("everysec", "always")
        else:
            save = client.config_get("save").get("save", "")  # type: ignore[union-attr]
            health.persistence = f"rdb snapshots only (save {save})" if save else "none"
            health.durable = False
    except redis.RedisError as exc:
        health.error = _clean(exc, url)
    finally:
        client.close()
    return health


def check_postgres(dsn: str, timeout: float = 3.0) -> ServiceHealth:
    import psycopg

    health = ServiceHealth("postgres", without_secrets(dsn), False, None, None, None, None)
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=max(1, int(timeout))) as conn:
            start = time.perf_counter()
            conn.execute("SELECT 1").fetchone()
            health.latency_ms = round((time.perf_counter() - start) * 1000, 3)
            health.reachable = True
            fsync = conn.execute("SHOW fsync").fetchone()[0]  # type: ignore[index]
            sync = conn.execute("SHOW synchronous_commit").fetchone()[0]  # type: ignore[index]
            health.persistence = f"fsync {fsync}, synchronous_commit {sync}"
            health.durable = fsync == "on" and sync != "off"
    except psycopg.Error as exc:
        health.error = _clean(exc, dsn)
    return health


def service_health(settings: Settings) -> list[ServiceHealth]:
    """Every service the profile's backends use (none in the embedded profile)."""
    checks = {"redis": lambda: check_redis(settings.redis_url), "postgres": lambda: check_postgres(settings.postgres_dsn)}
    return [checks[s]() for s in settings.services]


def stream_refusal(settings: Settings, redis: ServiceHealth) -> str | None:
    """Why `rtml up` must not put the stream on this Redis, or None."""
    if not redis.reachable:
        return f"Redis at {redis.url} is not reachable ({redis.error}): start it or point redis_url at it"
    if redis.durable or settings.stream.allow_volatile_redis:
        return None
    if redis.durable is None:
        return (
            f"cannot tell whether Redis at {redis.url} persists the stream: persistence {redis.persistence}. "
            f"Make sure it has AOF on ({FIX}), then set stream.allow_volatile_redis = true "
            "(RTML_STREAM__ALLOW_VOLATILE_REDIS=true) to go on"
        )
    return (
        f"Redis at {redis.url} does not persist the stream (persistence: {redis.persistence}): a restart "
        f"would lose every event not yet aggregated. Fix: {FIX}; {ALLOW} (RTML_STREAM__ALLOW_VOLATILE_REDIS=true)"
    )


def service_warnings(settings: Settings, health: list[ServiceHealth]) -> list[str]:
    """What `rtml status` warns about: unreachable or non-durable services."""
    out = []
    for s in health:
        if not s.reachable:
            out.append(f"{s.name} at {s.url} is not reachable: {s.error}")
        elif s.name == "redis" and not s.durable:
            allowed = " (allowed by stream.allow_volatile_redis)" if settings.stream.allow_volatile_redis else ""
            out.append(
                f"the stream is on a volatile Redis{allowed}: persistence {s.persistence}; a Redis restart "
                f"loses the events not yet aggregated ({FIX})"
            )
        elif s.name == "postgres" and s.durable is False:
            out.append(f"PostgreSQL commits are not durable ({s.persistence}): a crash may lose recent writes")
    return out
