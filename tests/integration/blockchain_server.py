"""A local stand-in for blockchain.com that speaks its protocol and misbehaves on cue.

One port serves both: the websocket (`/inv`: the client sends `{"op":"unconfirmed_sub"}`, the
server sends `utx` frames) and REST (`/unconfirmed-transactions?format=json`: `{"txs": [...]}`,
the last `rest_window` transactions newest first, with a `fee` field and, like old answers,
some amounts as strings). The server runs in its own thread and event loop.

Each websocket connection follows the next plan in `plans`, a list of actions:
  ("await_rest",)   wait until a REST answer was served for a request made after this
                    connection subscribed (the client must poll after every reconnect)
  ("send", n)       emit the next n transactions live
  ("repeat", k)     re-send the last k live frames (duplicates)
  ("garbage", f)    send a garbage frame f (str: text frame, bytes: binary frame)
  ("offline", n)    emit the next n transactions while the client cannot see them: they only
                    reach the REST window (what a real disconnect loses)
  ("drop",)         close the connection (code 1011)
  ("abort",)        cut the TCP connection without a close handshake
  ("stall",)        go silent (pongs still answered) until the client gives up and closes
  ("idle",)         the end: send everything left, mark `done`, then stay open
REST answers 429 with `Retry-After: 1` to its first `rest_429` requests. With `rest_emit`, each
successful REST answer first emits that many transactions (for the REST-only poller).
`rest_hostile` items (raw JSON text) lead every successful REST answer's `txs` list.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

Action = tuple[Any, ...]
_WAIT_S = 30.0


class BlockchainServer:
    def __init__(
        self,
        frames: list[str],
        plans: list[list[Action]] | None = None,
        *,
        rest_window: int = 100,
        rest_429: int = 1,
        rest_emit: int = 0,
        rest_hostile: list[str] | None = None,
    ) -> None:
        self.frames = frames
        self.txs = [json.loads(f)["x"] for f in frames]
        self.plans = list(plans or [])
        self.rest_window = rest_window
        self.rest_429_left = rest_429
        self.rest_emit = rest_emit
        self.rest_hostile = list(rest_hostile or [])
        self.emitted = 0  # transactions emitted so far (live or offline), in order
        self.live_frames: list[str] = []
        self.frames_sent = 0  # every websocket frame sent: transactions, repeats, garbage
        self.garbage_sent: list[str | bytes] = []
        self.rest_txs_served = 0
        self.rest_429_sent = 0
        self.connections = 0
        self.errors: list[str] = []
        self.done = threading.Event()
        self._seq = 0
        self._last_rest_ok_request = -1
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._serve_forever, daemon=True, name="blockchain-server")
        self.port = 0

    # --- lifecycle -----------------------------------------------------------------
    def __enter__(self) -> BlockchainServer:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the local blockchain server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/inv"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/unconfirmed-transactions?format=json"

    def _serve_forever(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve(self._handle, "127.0.0.1", 0, process_request=self._process_request) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            self._ready.set()
            await self._stop.wait()

    # --- REST ----------------------------------------------------------------------
    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if not request.path.startswith("/unconfirmed-transactions"):
            return None
        self._seq += 1
        if self.rest_429_left > 0:
            self.rest_429_left -= 1
            self.rest_429_sent += 1
            response = connection.respond(HTTPStatus.TOO_MANY_REQUESTS, "Too Many Requests\n")
            response.headers["Retry-After"] = "1"
            return response
        for _ in range(self.rest_emit):
            self._emit()
        window = self.txs[max(0, self.emitted - self.rest_window) : self.emitted]
        items = [*self.rest_hostile, *(json.dumps(self._rest_form(tx)) for tx in reversed(window))]
        body = '{"txs": [' + ", ".join(items) + "]}"
        self.rest_txs_served += len(window)
        self._last_rest_ok_request = self._seq
        response = connection.respond(HTTPStatus.OK, body)
        response.headers["Content-Type"] = "application/json"
        return response

    @staticmethod
    def _rest_form(tx: dict[str, Any]) -> dict[str, Any]:
        """REST transactions carry `fee`; old answers gave amounts as strings (every third here)."""
        fee = sum(i["prev_out"]["value"] for i in tx["inputs"]) - sum(o["value"] for o in tx["out"])
        rest = dict(tx, fee=fee)
        if int(tx["hash"][-2:], 16) % 3 == 0:
            rest["inputs"] = [
                {**i, "prev_out": {**i["prev_out"], "value": str(i["prev_out"]["value"])}}
                for i in tx["inputs"]
            ]
            rest["fee"] = str(fee)
        return rest

    # --- websocket -----------------------------------------------------------------
    def _emit(self) -> str | None:
        if self.emitted >= len(self.frames):
            return None
        self.emitted += 1
        return self.frames[self.emitted - 1]

    async def _until(self, condition: Callable[[], bool], what: str) -> bool:
        deadline = time.monotonic() + _WAIT_S
        while not condition():
            if time.monotonic() > deadline:
                self.errors.append(f"timed out waiting for {what}")
                return False
            await asyncio.sleep(0.005)
        return True

    async def _send(self, ws: ServerConnection, frame: str | bytes) -> None:
        await ws.send(frame)
        self.frames_sent += 1

    async def _handle(self, ws: ServerConnection) -> None:
        subscribe = await ws.recv()
        if json.loads(subscribe) != {"op": "unconfirmed_sub"}:
            self.errors.append(f"unexpected first frame {subscribe!r}")
            await ws.close(1008, "subscribe first")
            return
        self._seq += 1
        subscribed = self._seq
        plan = self.plans[self.connections] if self.connections < len(self.plans) else [("idle",)]
        self.connections += 1
        for action, *args in plan:
            if action == "await_rest":
                if not await self._until(lambda: self._last_rest_ok_request > subscribed, "a REST poll"):
                    await ws.close(1011, "no REST poll")
                    return
            elif action in ("send", "offline"):
                for _ in range(args[0]):
                    frame = self._emit()
                    if frame is not None and action == "send":
                        self.live_frames.append(frame)
                        await self._send(ws, frame)
            elif action == "repeat":
                for frame in self.live_frames[-args[0] :]:
                    await self._send(ws, frame)
            elif action == "garbage":
                self.garbage_sent.append(args[0])
                await self._send(ws, args[0])
            elif action == "drop":
                await ws.close(1011, "server going away")
                return
            elif action == "abort":
                assert ws.transport is not None
                ws.transport.abort()
                return
            elif action == "stall":
                try:
                    await asyncio.wait_for(ws.wait_closed(), _WAIT_S)
                except TimeoutError:
                    self.errors.append("the client never gave up on a stalled connection")
                return
            elif action == "idle":
                while (frame := self._emit()) is not None:
                    self.live_frames.append(frame)
                    await self._send(ws, frame)
                self.done.set()
                await ws.wait_closed()
                return
