"""The forecast API's metrics and the pure-ASGI middleware that guards and times every request.

Pure ASGI rather than FastAPI's `BaseHTTPMiddleware`: a few microseconds a request, and a body
is read (and refused) in chunks without ever holding more than the limit.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ServingMetrics:
    """Prometheus metrics of one app, in a registry of its own (other parts may add collectors)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "rtml_serving_requests", "HTTP requests by route and status.", ["route", "method", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "rtml_serving_request_seconds",
            "HTTP request latency by route.",
            ["route"],
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.forecasts = Counter("rtml_serving_forecasts", "Forecasts given, by kind.", ["kind"], registry=r)
        self.stale = Counter("rtml_serving_stale_refusals", "GET /forecast refused on stale features.", registry=r)
        self.swaps = Counter("rtml_serving_model_swaps", "Champion models swapped in.", registry=r)
        self.poll_errors = Counter("rtml_serving_registry_errors", "Failed champion polls.", registry=r)
        self.feature_age = Gauge(
            "rtml_serving_feature_age_seconds", "Age of the newest online minute at the last forecast.", registry=r
        )
        self.model_version = Gauge(
            "rtml_serving_model_version", "Version of the model being served.", registry=r
        )



class Guard:
    """Refuses, before any route runs, a Host not in serving.allowed_hosts (400: a DNS rebinding
    page reaches 127.0.0.1 under its own name) and a body over serving.max_body_bytes (413),
    whether announced by Content-Length or streamed: at most the limit is ever held in memory."""

    def __init__(self, app: Callable[..., Awaitable[None]], hosts: list[str], max_body_bytes: int) -> None:
        self.app = app
        self.hosts = {h.lower().strip("[]") for h in hosts}
        self.max_body = max_body_bytes

    @staticmethod
    def _host(headers: dict[bytes, bytes]) -> str:
        raw = headers.get(b"host", b"").decode("latin-1").strip().lower()
        if raw.startswith("["):  # [::1]:8000
            return raw[1:].partition("]")[0]
        return raw.rpartition(":")[0] if raw.count(":") == 1 else raw

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        host = self._host(headers)
        if "*" not in self.hosts and host not in self.hosts:
            await refuse(send, 400, f"Host {host!r} is not in serving.allowed_hosts")
            return
        length = headers.get(b"content-length")
        too_large = f"request body over serving.max_body_bytes = {self.max_body} bytes"
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await refuse(send, 413 if length.isdigit() else 400, too_large if length.isdigit() else "bad Content-Length")
            return
        if scope["method"] in ("GET", "HEAD") and length is None:
            await self.app(scope, receive, send)
            return
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body:
                await refuse(send, 413, too_large)
                return
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # type: ignore[no-any-return]

        await self.app(scope, replay, send)


async def refuse(send: Any, status: int, detail: str) -> None:
    payload = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class Instrument:
    """Counts and times every request by route template (pure ASGI: a few microseconds)."""

    def __init__(self, app: Callable[..., Awaitable[None]], metrics: ServingMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.metrics.requests.labels(path, scope["method"], str(status)).inc()
            self.metrics.request_seconds.labels(path).observe(time.perf_counter() - started)
