"""The live client against a local blockchain.com that drops, stalls, repeats, sends garbage and rate-limits.

The server replays real frames from `../shared/data/utx-2020-11-24.jsonl.gz`; the truth is
every transaction it emitted, live or while the client was away (the REST window covers those).
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from blockchain_server import BlockchainServer

from rtml.config import Settings
from rtml.sources.blockchain_rest import LiveStats, run_rest
from rtml.sources.blockchain_ws import run_ws
from rtml.sources.deadletters import open_ingest_store
from rtml.sources.ingest import Ingestor, ingest_counters
from rtml.stream import open_stream

GARBAGE: list[str | bytes] = [
    "not json at all",
    b"\xff\xfe\x00 binary noise",
    '{"op":"utx","x":{"hash":"zz"}}',
    '{"op":"utx","x":{}}',
]


def real_frames(shared_data: Path, n: int) -> list[str]:
    with gzip.open(shared_data / "utx-2020-11-24.jsonl.gz", "rt") as lines:
        return [next(lines).rstrip("\n") for _ in range(n)]


def truth(frames: list[str]) -> set[tuple[str, int]]:
    """(hash, fee) straight from the recording: Σ inputs' prev_out values − Σ output values."""
    out = set()
    for frame in frames:
        x = json.loads(frame)["x"]
        fee = sum(i["prev_out"]["value"] for i in x["inputs"]) - sum(o["value"] for o in x["out"])
        out.add((x["hash"], fee))
    return out


def fast_settings(settings: Settings) -> Settings:
    settings.ingest = settings.ingest.model_copy(
        update={
            "stall_timeout_s": 3.0,
            "ping_interval_s": 0.3,
            "reconnect_base_s": 0.05,
            "reconnect_max_s": 0.4,
            "rest_min_interval_s": 0.05,
        }
    )
    return settings


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 40.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def run_in_thread(
    target: Callable[[threading.Event], LiveStats],
) -> tuple[threading.Event, threading.Thread, list]:
    stop = threading.Event()
    result: list = []

    def body() -> None:
        try:
            result.append(target(stop))
        except BaseException as exc:  # surfaced by the test below
            result.append(exc)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return stop, thread, result


def play_ws(settings: Settings, server: BlockchainServer, appended: int) -> tuple[list, bool]:
    """Run the websocket client against `server` until it has played its whole script and
    `appended` transactions are in the stream (or the client returned), then stop it.

    Returns what the client returned or raised once stopped, and whether it was still running,
    having returned nothing, when it was told to stop (a live client never exits on its own).
    """

    def client(stop: threading.Event) -> LiveStats:
        with Ingestor(settings) as ingestor:
            return run_ws(ingestor, settings.ingest, ws_url=server.ws_url, rest_url=server.rest_url, stop=stop)

    stop, thread, result = run_in_thread(client)
    try:
        wait_for(lambda: server.done.is_set() or bool(result), "the server to play its whole script")
        wait_for(lambda: ingest_counters(settings)["appended"] >= appended or bool(result), "every transaction")
        ran_through = not result and thread.is_alive()
    finally:
        stop.set()
        thread.join(30)
    return result, ran_through


def stored(settings: Settings) -> list[tuple[str, int]]:
    with open_stream(settings) as stream:
        return [(e.tx_hash, e.fee_sat) for _, e in stream.read(None, 1_000_000)]


def test_survives_drops_stalls_repeats_garbage_and_429(settings: Settings, shared_data: Path) -> None:
    frames = real_frames(shared_data, 400)
    plans = [
        [("await_rest",), ("send", 60), ("repeat", 5), ("garbage", GARBAGE[0]), ("send", 40), ("offline", 30), ("drop",)],
        [("await_rest",), ("offline", 20), ("abort",)],
        [
            ("await_rest",), ("send", 50), ("garbage", GARBAGE[1]), ("garbage", GARBAGE[2]), ("repeat", 10),
            ("send", 50), ("offline", 25), ("stall",),
        ],
        [("await_rest",), ("send", 60), ("garbage", GARBAGE[3]), ("repeat", 3), ("offline", 15), ("drop",)],
        [("await_rest",), ("idle",)],
    ]  # fmt: skip
    settings = fast_settings(settings)
    with BlockchainServer(frames, plans, rest_window=100, rest_429=1) as server:
        result, _ = play_ws(settings, server, len(frames))
        assert not server.errors
        stats = result[0]
        assert isinstance(stats, LiveStats), stats

        events = stored(settings)
        assert len(events) == len(frames)  # nothing twice
        assert set(events) == truth(frames)

        counters = ingest_counters(settings)
        assert counters["received"] == server.frames_sent + server.rest_txs_served
        assert counters["dead_letters"] == len(GARBAGE)
        assert counters["valid"] == counters["received"] - len(GARBAGE)
        assert counters["duplicates"] == counters["valid"] - len(frames) > 0
        assert counters["appended"] == len(frames)

        with open_ingest_store(settings) as store:
            letters = store.dead_letters()
        expected_raw = [g if isinstance(g, str) else g.decode("utf-8", "backslashreplace") for g in GARBAGE]
        assert [d.raw for d in letters] == expected_raw
        assert all(d.reason and d.source == "ws" for d in letters)

        assert stats.connects == len(plans)
        assert stats.stalls == 1
        assert stats.drops >= 3
        assert stats.rest_429 == server.rest_429_sent == 1


def test_rest_only_polling_catches_everything_once(settings: Settings, shared_data: Path) -> None:
    frames = real_frames(shared_data, 300)
    settings = fast_settings(settings)
    with BlockchainServer(frames, rest_window=100, rest_429=1, rest_emit=60) as server:

        def client(stop: threading.Event) -> LiveStats:
            with Ingestor(settings) as ingestor:
                return run_rest(ingestor, settings.ingest, rest_url=server.rest_url, stop=stop)

        stop, thread, result = run_in_thread(client)
        try:
            wait_for(
                lambda: ingest_counters(settings)["appended"] >= len(frames) or bool(result),
                "every transaction",
            )
        finally:
            stop.set()
            thread.join(30)
        stats = result[0]
        assert isinstance(stats, LiveStats), stats
        assert set(stored(settings)) == truth(frames)
        counters = ingest_counters(settings)
        assert counters["appended"] == len(frames)
        assert counters["duplicates"] == counters["valid"] - len(frames)
        assert counters["dead_letters"] == 0
        assert stats.rest_429 == 1


def test_unreachable_server_never_crashes(settings: Settings) -> None:
    settings = fast_settings(settings)
    with Ingestor(settings) as ingestor:
        stats = run_ws(
            ingestor,
            settings.ingest,
            ws_url="ws://127.0.0.1:9/inv",
            rest_url="http://127.0.0.1:9/x",
            duration_s=1.0,
        )
    assert stats.connects == 0 and stats.drops >= 2 and stats.rest_polls == 0


def test_cli_ingest_ws_against_the_local_server_stops_cleanly_on_sigterm(
    data_dir: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import signal
    import subprocess
    import sys

    monkeypatch.setenv("RTML_INGEST__REST_MIN_INTERVAL_S", "0.1")
    frames = real_frames(shared_data, 50)
    with BlockchainServer(frames, [[("await_rest",), ("idle",)]], rest_429=1) as server:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rtml", "ingest", "--source", "ws",
             "--ws-url", server.ws_url, "--rest-url", server.rest_url],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            wait_for(
                lambda: proc.poll() is not None
                or (server.done.is_set() and ingest_counters(Settings())["appended"] >= len(frames)),
                "the CLI to ingest every frame",
                timeout=90,
            )
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
        assert proc.returncode == 0, err[-2000:]
        assert not server.errors
    assert "1 connects" in out and "1 x 429" in out and "appended" in out
    counters = ingest_counters(Settings())
    assert counters["appended"] == len(frames)
    assert counters["received"] == server.frames_sent + server.rest_txs_served
