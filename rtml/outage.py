"""Riding out a Redis or PostgreSQL outage inside a component, instead of dying and being
restarted by the supervisor (which, over a minute-long outage, ends in its `backoff` state).

A component's live loop hands every failure to its `Outage`: one that says a service could not
be reached (`service_of`) is waited out with jittered exponential backoff capped at
`BACKOFF_MAX_S` (so the component notices a returned service within that bound) while the
component keeps its in-flight work; any other failure is the caller's to raise. The first
success after an outage closes it.

Each component says what it goes through in two places:
- `<data_dir>/run/health-<component>.json` (beside the supervisor's state.json), which
  `rtml status` reads: `ok` or `degraded`, the services down since when, the last error and its
  time, and component counters (the ingest buffer's);
- the event log: `service.down` when an outage starts and `service.up` with its duration when
  it ends (service, component, wall times). The event log may live on the PostgreSQL that is
  down: an event that cannot be recorded waits in memory and is retried at each later note
  (a component that dies meanwhile loses those events, never its data; the log line stays).

A shared module, importing no part: every part rides out outages, and the stores' spool
(rtml.spool) reports here. The event log (a part, monitoring, which itself spools) is not
imported but registers itself (`record_events_with`) when its module is imported; the CLI
imports it for every component. Until it has, events wait in memory like those of a log that is down.
"""

from __future__ import annotations

import json
import logging
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from rtml.config import Settings

log = logging.getLogger(__name__)
BACKOFF_BASE_S = 0.5
# The longest wait between two tries: the bound on how late a component notices a service is back.
BACKOFF_MAX_S = 5.0


def service_of(exc: BaseException) -> str | None:
    """`redis` or `postgres` when `exc` (or what caused it) says that service could not be
    reached (refused, reset, timed out, still loading its data), else None (a real failure)."""
    redis_errors: tuple[type[BaseException], ...] = ()
    pg_errors: tuple[type[BaseException], ...] = ()
    if "redis" in sys.modules:
        import redis.exceptions

        redis_errors = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
    if "psycopg" in sys.modules:
        import psycopg

        pg_errors += (psycopg.OperationalError, psycopg.InterfaceError)
    if "sqlalchemy" in sys.modules:  # MLflow's registry store
        import sqlalchemy.exc

        pg_errors += (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return None
        if redis_errors and isinstance(seen, redis_errors):
            return "redis"
        if pg_errors and isinstance(seen, pg_errors):
            return "postgres"
        seen = seen.__cause__ or seen.__context__
    return None


class EventRecorder(Protocol):
    """What the reporter needs of the event log: a keyed, idempotent record, and close."""

    def record(self, kind: str, time_ms: int | None = None, key: str | None = None, **details: Any) -> bool: ...

    def close(self) -> None: ...


# Opens this process's event log (settings -> recorder); set by the event log's module.
_open_events: Callable[[Settings], EventRecorder] | None = None


def record_events_with(open_events: Callable[[Settings], EventRecorder]) -> None:
    """Where `service.down` / `service.up` go from now on (rtml.monitoring.events calls this)."""
    global _open_events
    _open_events = open_events


# This process's component (the last `Outage` made here), for stores deep inside it that ride
# out an outage themselves (`absorbed`, `restored`).
_component: Outage | None = None


def absorbed(service: str, store: str, what: str) -> None:
    """`store` kept a write aside because `service` is unreachable (rtml.spool): the component
    goes on, but says it is degraded and the event log gets `service.down`."""
    if _component is not None and not _component.flushing:  # not the event log spooling our own news
        _component.note(service, what, store=store)


def restored(service: str, store: str) -> None:
    """`store`'s spool is empty (drained, by this process or another): once every store this
    component spooled to is, `service` is taken to answer again."""
    if _component is not None and service in _component.down:
        _component.restored(service, store)


def health_path(settings: Settings, component: str) -> Path:
    return settings.folder("run") / f"health-{component}.json"


def read_health(settings: Settings, component: str) -> dict[str, Any] | None:
    try:
        return json.loads(health_path(settings, component).read_text())  # type: ignore[no-any-return]
    except (FileNotFoundError, json.JSONDecodeError):
        return None


class Outage:
    """What one component knows of the services it needs: which are down since when, the last
    error, and how long to wait before the next try."""

    def __init__(self, settings: Settings, component: str) -> None:
        self.settings = settings
        self.component = component
        # service -> wall time it was first found down; a component restarted during an outage
        # takes it over from its health file, so its `service.up` tells the whole duration.
        previous = read_health(settings, component) or {}
        self.down: dict[str, float] = dict(previous.get("services_down") or {})
        # service -> the stores whose spools hold this component's writes for it
        self.absorbed: dict[str, set[str]] = {s: set(v) for s, v in (previous.get("absorbed") or {}).items()}
        self.attempt = 0
        self.last_error: str | None = previous.get("last_error")
        self.last_error_at: float | None = previous.get("last_error_at")
        # Component counters shown in status beside the health (the ingest buffer's).
        self.extra: dict[str, Any] = {}
        self._pending: list[tuple[str, str, dict[str, Any]]] = []
        self._next_flush = 0.0
        self.flushing = False
        self._rnd = random.Random()
        self.write()
        global _component
        _component = self

    def ride(self, exc: BaseException) -> float | None:
        """Note a failure; seconds to wait before trying again when a service is unreachable,
        None when the failure is not an outage (the caller raises it)."""
        service = service_of(exc)
        if service is None:
            return None
        self.note(service, f"{type(exc).__name__}: {exc}")
        ceiling = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** min(self.attempt, 30))
        self.attempt += 1
        return ceiling / 2 + self._rnd.uniform(0, ceiling / 2)

    def note(self, service: str, error: str, *, store: str | None = None) -> None:
        """`service` is unreachable; with `store`: that store kept the write aside (a local
        spool), so the loop goes on and only its drain (`restored`) ends the outage."""
        now = time.time()
        self.last_error, self.last_error_at = f"{service}: {error}"[:500], now
        if store is not None:
            self.absorbed.setdefault(service, set()).add(store)
        if service not in self.down:
            self.down[service] = now
            log.warning("%s: %s is unreachable (%s); riding it out", self.component, service, self.last_error)
            self._event("service.down", f"{self.component}:{service}:{int(now * 1000)}",
                        service=service, component=self.component, at_ms=int(now * 1000), error=self.last_error)  # fmt: skip
        self.write()
        self._flush_events()

    def recovered(self) -> None:
        """A round of the component's work succeeded: every outage its loop met is over (not
        those a spool absorbed: the loop succeeds while they last)."""
        over = [s for s in self.down if not self.absorbed.get(s)]
        if not over:
            if self._pending and time.monotonic() >= self._next_flush:
                self._flush_events()
            return
        for service in over:
            self.restored(service)
        self.attempt = 0

    def restored(self, service: str, store: str | None = None) -> None:
        """`service` answers again (for `store`): `service.up` with the outage's duration."""
        waiting = self.absorbed.get(service, set())
        waiting.discard(store)  # type: ignore[arg-type]
        if store is not None and waiting:
            self.write()
            return
        self.absorbed.pop(service, None)
        since = self.down.pop(service, None)
        if since is None:
            return
        now = time.time()
        log.warning("%s: %s is back after %.1f s", self.component, service, now - since)
        self._event("service.up", f"{self.component}:{service}:{int(since * 1000)}:up",
                    service=service, component=self.component, down_ms=int(since * 1000),
                    at_ms=int(now * 1000), duration_s=round(now - since, 1))  # fmt: skip
        self.write()
        self._flush_events()

    def write(self) -> None:
        """The health file, replaced atomically (a reader never sees half of it)."""
        doc = {
            "component": self.component,
            "health": "degraded" if self.down else "ok",
            "services_down": {s: round(t, 3) for s, t in self.down.items()},
            "absorbed": {s: sorted(v) for s, v in self.absorbed.items() if v},
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "updated_at": time.time(),
            **self.extra,
        }
        path = health_path(self.settings, self.component)
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(doc))
            tmp.replace(path)
        except OSError as exc:  # a full disk must not turn an outage into a crash
            log.warning("could not write %s: %s", path, exc)

    def _event(self, kind: str, key: str, **details: Any) -> None:
        self._pending.append((kind, key, details))

    def _flush_events(self) -> None:
        """Record waiting events; those the event log cannot take yet wait for the next note."""
        if not self._pending or self.flushing or _open_events is None:
            return
        self._next_flush = time.monotonic() + BACKOFF_MAX_S
        self.flushing = True
        try:
            events = _open_events(self.settings)
            try:
                while self._pending:
                    kind, key, details = self._pending[0]
                    events.record(kind, key=key, **details)
                    self._pending.pop(0)
            finally:
                events.close()
        except Exception as exc:  # noqa: BLE001 - the event log is down too: retried at the next note
            log.info("%d service events wait for the event log (%s)", len(self._pending), exc)
        finally:
            self.flushing = False
