"""blockchain.com REST: `/unconfirmed-transactions?format=json` (the last ~100 unconfirmed transactions).

Used two ways: to fill the gap after every websocket (re)connect, and as a polling-only source
(the AWS original's method). The API allows about one request per 10 s and answers HTTP 429
beyond that; the poller keeps `rest_min_interval_s` between requests and, on 429, waits what
`Retry-After` says (seconds or an HTTP date) before trying again. Network errors and 5xx are
retried with jittered exponential backoff. Overlap between polls is expected: dedup drops it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from rtml.config import IngestSettings
from rtml.contracts import MAX_FRAME_BYTES, Oversized
from rtml.sources.base import Source
from rtml.sources.ingest import Ingestor

log = logging.getLogger(__name__)
# Longest a Retry-After is obeyed; a server asking for more gets asked again after this.
MAX_RETRY_AFTER_S = 300.0
# Longest REST answer read: about 100 transactions are usually well under 1 MB; a longer body
# is refused after reading this much (its prefix, length and hash dead-lettered).
MAX_REST_BODY = 16 * MAX_FRAME_BYTES


@dataclass
class LiveStats:
    """What a live run went through, beyond the pipeline counters."""

    connects: int = 0
    drops: int = 0
    stalls: int = 0
    rest_polls: int = 0
    rest_429: int = 0
    rest_errors: int = 0
    # Failures inside the live loop that were not the network's (a store down, a bug): each is
    # logged with its traceback, counted here and retried; none ends the loop.
    errors: int = 0

    def describe(self) -> str:
        return (
            f"{self.connects} connects, {self.drops} drops, {self.stalls} stalls, "
            f"{self.rest_polls} REST polls, {self.rest_429} x 429, {self.rest_errors} REST errors, "
            f"{self.errors} errors"
        )


def backoff_delay(attempt: int, base_s: float, max_s: float, rnd: random.Random | None = None) -> float:
    """Exponential backoff with equal jitter: half fixed, half random, capped at `max_s`."""
    ceiling = min(max_s, base_s * 2 ** min(attempt, 30))
    return ceiling / 2 + (rnd or random).uniform(0, ceiling / 2)


def retry_after_s(value: str | None, default: float) -> float:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date)."""
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return default
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def split_rest_body(body: bytes | Oversized) -> tuple[list[Any], str | None]:
    """The `txs` of a REST answer, or the reason the whole body is unusable.

    A body too deeply nested for the JSON parser is split into its `txs` items without
    parsing them (`_split_txs`), so one hostile item is dead-lettered alone, not its 99 peers."""
    if isinstance(body, Oversized):
        return [], f"REST body of over {body.length:,} bytes is over the {MAX_REST_BODY:,}-byte limit"
    try:
        obj = json.loads(body)
    except RecursionError:
        items = _split_txs(body)
        return (items, None) if items is not None else ([], "REST body is not JSON: nested too deep")
    except ValueError as exc:
        return [], f"REST body is not JSON: {ascii(str(exc)[:200])}"
    if not isinstance(obj, dict) or not isinstance(obj.get("txs"), list):
        return [], "REST body has no 'txs' list"
    return obj["txs"], None


# JSON strings and structural characters: enough to find top-level items without recursion.
_TOKENS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},:]')


def _split_txs(body: bytes) -> list[Any] | None:
    """The raw bytes of each item of a body's top-level `txs` array, found by a flat scan (no
    recursion, any depth); None when the body does not have that shape."""
    depth = 0
    key: bytes | None = None
    start = -1
    items: list[Any] = []
    for token in _TOKENS.finditer(body):
        text = token.group()
        if text in (b"{", b"["):
            if depth == 1 and text == b"[" and key == b'"txs"' and start < 0:
                start = token.end()
            depth += 1
        elif text in (b"}", b"]"):
            depth -= 1
            if depth == 1 and start >= 0:
                item = body[start : token.start()].strip()
                if item:
                    items.append(item)
                return items
        elif text == b"," and depth == 2 and start >= 0:
            items.append(body[start : token.start()].strip())
            start = token.end()
        elif depth == 1 and text.startswith(b'"'):
            key = text
    return None


class RestPoller:
    """Fetches the unconfirmed-transactions endpoint politely; one instance per run."""

    def __init__(
        self, url: str, cfg: IngestSettings, stats: LiveStats, stopped: Callable[[], bool] = lambda: False
    ) -> None:
        self.url = url
        self.cfg = cfg
        self.stats = stats
        self.stopped = stopped
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=10.0), follow_redirects=True)
        self._last_request = -float("inf")
        self._rnd = random.Random()

    async def pause(self, seconds: float) -> bool:
        """Sleep unless stopped (a retry's backoff); False when the run is stopping."""
        return await self._sleep(seconds)

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopped; False when the run is stopping."""
        end = time.monotonic() + seconds
        while not self.stopped():
            left = end - time.monotonic()
            if left <= 0:
                return True
            await asyncio.sleep(min(left, 0.1))
        return False

    async def _get(self) -> tuple[int, Any, bytes | Oversized]:
        """Status, headers and body, reading at most MAX_REST_BODY bytes of it."""
        import hashlib

        async with self._client.stream("GET", self.url) as response:
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_REST_BODY:
                    head = b"".join(chunks)
                    return (
                        response.status_code,
                        response.headers,
                        Oversized(head[:MAX_FRAME_BYTES], size, hashlib.sha256(head).hexdigest()),
                    )
            return response.status_code, response.headers, b"".join(chunks)

    async def fetch(self) -> bytes | Oversized | None:
        """One successful answer body (after any 429 waits and retries), or None when stopping."""
        attempt = 0
        while not self.stopped():
            wait = self._last_request + self.cfg.rest_min_interval_s - time.monotonic()
            if wait > 0 and not await self._sleep(wait):
                return None
            self._last_request = time.monotonic()
            try:
                status, headers, body = await self._get()
            except httpx.HTTPError:
                status, headers, body = 0, {}, b""
            if status == 200:
                self.stats.rest_polls += 1
                return body
            if status == 429:
                self.stats.rest_429 += 1
                delay = retry_after_s(headers.get("Retry-After"), self.cfg.rest_min_interval_s)
            else:
                self.stats.rest_errors += 1
                delay = backoff_delay(attempt, self.cfg.reconnect_base_s, self.cfg.reconnect_max_s, self._rnd)
                attempt += 1
            if not await self._sleep(delay):
                return None
        return None

    async def poll_into(self, ingestor: Ingestor, source: str = "rest") -> bool:
        """Fetch once and run the transactions through the pipeline; False when stopping."""
        body = await self.fetch()
        if body is None:
            return False
        txs, error = split_rest_body(body)
        if error is not None:
            ingestor.refuse(body, error, source)
        elif txs:
            ingestor.ingest_live(txs, source)
        return True

    async def aclose(self) -> None:
        await self._client.aclose()


def run_rest(
    ingestor: Ingestor,
    cfg: IngestSettings,
    *,
    rest_url: str | None = None,
    stop: threading.Event | None = None,
    duration_s: float | None = None,
) -> LiveStats:
    """REST-only polling source: poll every `rest_min_interval_s` until stopped or `duration_s` passes."""
    stop = stop or threading.Event()
    stats = LiveStats()
    deadline = None if duration_s is None else time.monotonic() + duration_s

    def stopped() -> bool:
        return stop.is_set() or (deadline is not None and time.monotonic() >= deadline)

    async def main() -> None:
        poller = RestPoller(rest_url or cfg.rest_url, cfg, stats, stopped)
        failures = 0
        try:
            while not stopped():
                try:
                    if not await poller.poll_into(ingestor):
                        break
                    failures = 0
                except Exception:  # noqa: BLE001 - logged, counted, retried: never ends the loop
                    stats.errors += 1
                    log.exception("REST poll failed; retrying")
                    await poller.pause(backoff_delay(failures, cfg.reconnect_base_s, cfg.reconnect_max_s))
                    failures += 1
        finally:
            await poller.aclose()

    asyncio.run(main())
    return stats


class RestSource(Source):
    """`--source rest`: the blockchain.com REST poller alone (`run_rest`)."""

    name = "rest"

    def run(self, ingestor: Ingestor, stop: threading.Event) -> str:
        o = self.options
        return run_rest(
            ingestor, self.settings.ingest, rest_url=o.rest_url, stop=stop, duration_s=o.duration_s
        ).describe()
