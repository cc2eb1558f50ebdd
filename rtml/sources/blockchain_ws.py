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
import logging
import random
import threading
import time
from collections.abc import Callable

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from rtml.config import IngestSettings
from rtml.contracts import MAX_FRAME_BYTES
from rtml.sources.base import Source
from rtml.sources.blockchain_rest import LiveStats, RestPoller, backoff_delay
from rtml.sources.ingest import Ingestor

log = logging.getLogger(__name__)
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


class WsSource(Source):
    """`--source ws`: the blockchain.com websocket client, with the REST poller filling its gaps (`run_ws`)."""

    name = "ws"

    def run(self, ingestor: Ingestor, stop: threading.Event) -> str:
        o = self.options
        cfg = self.settings.ingest
        return run_ws(ingestor, cfg, ws_url=o.ws_url, rest_url=o.rest_url, stop=stop, duration_s=o.duration_s).describe()


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
        """Hand the buffer to the pipeline; if the pipeline raises, the batch stays to be retried.
        While the stream's store is unreachable the ingester holds the batch in its outage
        buffer and this loop goes on receiving; a quiet connection still drains that buffer."""
        if self._buffer or len(self.ingestor.buffer):
            self.ingestor.ingest_live(self._buffer, "ws")
            self._buffer = []

    def _failed(self, what: str) -> None:
        """A failure that is not the network's: logged with its traceback, counted, retried."""
        self.stats.errors += 1
        log.exception("%s failed; retrying", what)

    async def run(self) -> None:
        poller = RestPoller(self.rest_url, self.cfg, self.stats, self.stopped)
        fill = asyncio.Event()
        filler = asyncio.create_task(self._fill_gaps(poller, fill))
        attempt = 0
        try:
            while not self.stopped():
                got_frames = False
                try:
                    self._flush()  # a batch a failed store kept: delivered before new frames come
                    async with connect(
                        self.ws_url,
                        ping_interval=self.cfg.ping_interval_s,
                        ping_timeout=self.cfg.ping_interval_s,
                        open_timeout=max(self.cfg.stall_timeout_s, 5.0),
                        close_timeout=2.0,
                        max_size=MAX_FRAME_BYTES,
                    ) as ws:
                        self.stats.connects += 1
                        await ws.send(SUBSCRIBE)
                        fill.set()
                        got_frames = await self._receive(ws)
                    self._flush()
                except (WebSocketException, OSError, TimeoutError) as exc:
                    self.stats.drops += 1
                    self._refuse_too_big(exc)
                except Exception:  # noqa: BLE001 - no failure ends the live loop
                    self._failed("the websocket loop")
                if self.stopped():
                    break
                attempt = 0 if got_frames and not self._buffer else attempt + 1
                await self._sleep(
                    backoff_delay(attempt, self.cfg.reconnect_base_s, self.cfg.reconnect_max_s, self._rnd)
                )
        finally:
            filler.cancel()
            await asyncio.gather(filler, return_exceptions=True)
            await poller.aclose()
            try:
                self._flush()
            except Exception:  # noqa: BLE001 - stopping: the frames are lost to this run only
                self._failed("the last flush")

    def _refuse_too_big(self, exc: BaseException) -> None:
        """A frame over MAX_FRAME_BYTES closes the connection (close code 1009) before it is read
        whole: dead-letter the fact, since the frame itself was never held."""
        if (
            isinstance(exc, ConnectionClosed)
            and exc.rcvd is None
            and exc.sent is not None
            and exc.sent.code == 1009
        ):
            try:
                self.ingestor.refuse(
                    b"",
                    f"websocket frame over the {MAX_FRAME_BYTES:,}-byte limit: connection closed and reopened",
                    "ws",
                )
            except Exception:  # noqa: BLE001
                self._failed("recording an oversized frame")

    async def _receive(self, ws: ClientConnection) -> bool:
        """Read frames until stalled or stopped (a drop raises); True when any frame came."""
        got = False
        last_frame = time.monotonic()
        while not self.stopped():
            now = time.monotonic()
            if (self._buffer and now - self._buffered_at >= _FLUSH_S) or (
                not self._buffer and len(self.ingestor.buffer)
            ):
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
        failures = 0
        while not self.stopped():
            try:
                await asyncio.wait_for(fill.wait(), _TICK_S)
            except TimeoutError:
                continue
            fill.clear()
            try:
                self._flush()  # keep the stream in arrival order: frames before the poll go first
                await poller.poll_into(self.ingestor)
                failures = 0
            except Exception:  # noqa: BLE001 - the gap filler never ends silently: retry the fill
                self._failed("the REST gap fill")
                await self._sleep(
                    backoff_delay(failures, self.cfg.reconnect_base_s, self.cfg.reconnect_max_s)
                )
                failures += 1
                fill.set()

    async def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.stopped() and (left := end - time.monotonic()) > 0:
            await asyncio.sleep(min(left, _TICK_S))
