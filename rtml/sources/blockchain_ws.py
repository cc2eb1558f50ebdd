"""The live source: blockchain.com's websocket (`{"op":"unconfirmed_sub"}`, one `utx` frame per transaction).

Built to survive a real network: keepalive pings (the websockets library closes a connection
whose pongs stop), a stall timeout (no frame for `stall_timeout_s` drops and reopens the
connection even when pongs still come), reconnects with jittered exponential backoff, and after
every (re)connect a REST poll of the last ~100 transactions that fills what was missed while
disconnected. A fill requested while one is running runs again afterwards, so every reconnect
gets a poll that started after it. Frames are handed to the pipeline in small batches (at most
`_FLUSH_S` old), so a quiet stream is still written promptly.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from rtml.config import IngestSettings
from rtml.sources.blockchain_rest import LiveStats, RestPoller, backoff_delay
from rtml.sources.ingest import Ingestor

SUBSCRIBE = '{"op":"unconfirmed_sub"}'
_FLUSH_S = 0.1
_FLUSH_FRAMES = 1000
_TICK_S = 0.1


def run_ws(
    ingestor: Ingestor,
    cfg: IngestSettings,
    *,
    ws_url: str | None = None,
    rest_url: str | None = None,
    stop: threading.Event | None = None,
    duration_s: float | None = None,
) -> LiveStats:
    """Ingest the websocket until `stop` is set or `duration_s` passes; returns what the connection went through."""
    stop = stop or threading.Event()
    deadline = None if duration_s is None else time.monotonic() + duration_s

    def stopped() -> bool:
        return stop.is_set() or (deadline is not None and time.monotonic() >= deadline)

    client = _LiveClient(ingestor, cfg, ws_url or cfg.ws_url, rest_url or cfg.rest_url, stopped)
    asyncio.run(client.run())
    return client.stats


class _LiveClient:
    def __init__(
        self, ingestor: Ingestor, cfg: IngestSettings, ws_url: str, rest_url: str, stopped: Callable[[], bool]
    ) -> None:
        self.ingestor = ingestor
        self.cfg = cfg
        self.ws_url = ws_url
        self.rest_url = rest_url
        self.stopped = stopped
        self.stats = LiveStats()
        self._buffer: list[bytes | str] = []
        self._buffered_at = 0.0
        self._rnd = random.Random()

    def _flush(self) -> None:
        if self._buffer:
            batch, self._buffer = self._buffer, []
            self.ingestor.ingest(batch, "ws")

    async def run(self) -> None:
        poller = RestPoller(self.rest_url, self.cfg, self.stats, self.stopped)
        fill = asyncio.Event()
        filler = asyncio.create_task(self._fill_gaps(poller, fill))
        attempt = 0
        try:
            while not self.stopped():
                got_frames = False
                try:
                    async with connect(
                        self.ws_url,
                        ping_interval=self.cfg.ping_interval_s,
                        ping_timeout=self.cfg.ping_interval_s,
                        open_timeout=max(self.cfg.stall_timeout_s, 5.0),
                        close_timeout=2.0,
                        max_size=2**24,
                    ) as ws:
                        self.stats.connects += 1
                        await ws.send(SUBSCRIBE)
                        fill.set()
                        got_frames = await self._receive(ws)
                except (WebSocketException, OSError, TimeoutError):
                    self.stats.drops += 1
                finally:
                    self._flush()
                if self.stopped():
                    break
                attempt = 0 if got_frames else attempt + 1
                await self._sleep(
                    backoff_delay(attempt, self.cfg.reconnect_base_s, self.cfg.reconnect_max_s, self._rnd)
                )
        finally:
            filler.cancel()
            await asyncio.gather(filler, return_exceptions=True)
            await poller.aclose()
            self._flush()

    async def _receive(self, ws: ClientConnection) -> bool:
        """Read frames until stalled or stopped (a drop raises); True when any frame came."""
        got = False
        last_frame = time.monotonic()
        while not self.stopped():
            now = time.monotonic()
            if self._buffer and now - self._buffered_at >= _FLUSH_S:
                self._flush()
            stall_left = last_frame + self.cfg.stall_timeout_s - now
            if stall_left <= 0:
                self.stats.stalls += 1
                return got
            try:
                frame = await asyncio.wait_for(ws.recv(), min(stall_left, _TICK_S))
            except TimeoutError:
                continue
            last_frame = time.monotonic()
            got = True
            if not self._buffer:
                self._buffered_at = last_frame
            self._buffer.append(frame)
            if len(self._buffer) >= _FLUSH_FRAMES:
                self._flush()
        return got

    async def _fill_gaps(self, poller: RestPoller, fill: asyncio.Event) -> None:
        while not self.stopped():
            try:
                await asyncio.wait_for(fill.wait(), _TICK_S)
            except TimeoutError:
                continue
            fill.clear()
            self._flush()  # keep the stream in arrival order: frames before the poll go first
            await poller.poll_into(self.ingestor)

    async def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.stopped() and (left := end - time.monotonic()) > 0:
            await asyncio.sleep(min(left, _TICK_S))
