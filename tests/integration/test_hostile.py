"""Hostile input never stops, corrupts or slows the pipeline (issue 15), on both profiles.

The property test sends random mixes of valid frames and hostile ones through the real path,
ingest -> stream -> aggregate -> feature store, and checks: nothing exits, every valid frame
is counted and none is late, the feature store's minutes equal the pandas reference of the
valid frames alone, and every hostile frame is in the dead-letter store (by the SHA-256 of
the whole frame, or, for a clock outlier, by its hash).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtml.aggregate.embedded import Engine, aggregate_counters
from rtml.aggregate.reference import reference_minutes
from rtml.config import Settings, get_settings
from rtml.contracts import DEAD_LETTER_MAX_BYTES, MAX_FRAME_BYTES, TxEvent
from rtml.pipeline import minute_sinks
from rtml.sources.commands import run_ingest
from rtml.sources.deadletters import open_ingest_store
from rtml.sources.ingest import Ingestor, ingest_counters
from rtml.sources.replay import paced_batches, read_lines
from rtml.sources.synthetic import to_utx_message

T0 = int(datetime(2024, 10, 1, tzinfo=UTC).timestamp() * 1000)
JUMP_MS = 3600 * 1000


def _hash(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def utx(i: int, t_ms: int, fee: int, **x: Any) -> bytes:
    msg = to_utx_message(TxEvent(_hash(i), t_ms, fee, 200 + i % 300, "t", 0))
    msg["x"].update(x)
    return msgspec.json.encode(msg)


def hostile_frame(kind: str, k: int, t_ms: int) -> bytes:
    """One frame of each kind the issue names (k makes each one distinct)."""
    if kind == "fee_beyond_21M_BTC":
        return utx(10_000 + k, t_ms, 0, inputs=[{"prev_out": {"value": 2**63 + k}}], out=[])
    if kind == "two_fees_of_2_62":
        return utx(10_000 + k, t_ms, 0, inputs=[{"prev_out": {"value": 2**62}}], out=[{"value": k}])
    if kind == "size_beyond_4MB":
        return utx(10_000 + k, t_ms, 5, size=4_000_001 + k)
    if kind == "number_too_long":
        return b'{"op":"utx","x":{"hash":"%s","time":%d,"size":%s}}' % (
            _hash(10_000 + k).encode(),
            t_ms // 1000,
            b"9" * (4400 + k),
        )
    if kind == "nesting_too_deep":
        return b'{"op":"utx","x":' + b'{"a":' * (3000 + k) + b"1" + b"}" * (3001 + k)
    if kind == "frame_too_large":  # over the dead-letter bound: kept as a bounded prefix
        return b'{"op":"utx","pad":"' + b"x" * (DEAD_LETTER_MAX_BYTES + 1000 + k) + b'"}'
    if kind == "line_too_long":  # over the frame bound: never held whole
        return b'{"op":"utx","pad":"' + b"y" * (MAX_FRAME_BYTES + k) + b'"}'
    if kind == "encoding":
        return b'{"op":"utx","x":{"hash":"\xff\xfe%d"}}' % k
    raise AssertionError(kind)


KINDS = (
    "fee_beyond_21M_BTC",
    "two_fees_of_2_62",
    "size_beyond_4MB",
    "number_too_long",
    "nesting_too_deep",
    "frame_too_large",
    "encoding",
    "far_clock",
)


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[tuple[str, int, int]], list[bytes], list[bytes], list[str]]:
    """(valid rows, all lines in order, parse-hostile lines, far-clock hashes)."""
    n = draw(st.integers(min_value=25, max_value=160))
    gaps = draw(st.lists(st.sampled_from([0, 1, 3, 9, 20, 140]), min_size=n, max_size=n))
    fees = draw(st.lists(st.integers(min_value=0, max_value=2_100_000), min_size=n, max_size=n))
    valid: list[tuple[str, int, int]] = []
    t = T0 + draw(st.integers(0, 59_999))
    for i, (gap, fee) in enumerate(zip(gaps, fees, strict=True)):
        t += gap * 1000
        valid.append((_hash(i), t, fee))
    lines = [utx(i, et, fee) for i, (_, et, fee) in enumerate(valid)]
    kinds = draw(st.lists(st.sampled_from(KINDS), min_size=1, max_size=8))
    if draw(st.booleans()) and "line_too_long" not in kinds:
        kinds.append("line_too_long")
    hostile: list[bytes] = []
    far: list[str] = []
    for k, kind in enumerate(kinds):
        at = draw(st.integers(0, len(lines)))
        if kind == "far_clock":  # each far clock on its own: none corroborates another
            years = draw(st.integers(1, 70))
            et = valid[-1][1] + (k + 2) * 3 * JUMP_MS + years * 365 * 86_400_000 // 4
            line = utx(20_000 + k, et, 1_000)
            far.append(_hash(20_000 + k))
        else:
            line = hostile_frame(kind, k, valid[min(at, n - 1)][1])
            hostile.append(line)
        lines.insert(at, line)
    return valid, lines, hostile, far


def run_pipeline(settings_: Settings, lines: list[bytes], tmp: Path) -> None:
    tmp.mkdir(parents=True, exist_ok=True)
    replay = tmp / "replay.jsonl"
    replay.write_bytes(b"\n".join(lines) + b"\n")
    run_ingest(settings_, "replay", file=replay, speed=None, archive=False, console=_quiet())
    engine = Engine(settings_, sinks=minute_sinks(settings_))
    try:
        engine.drain()
    finally:
        engine.close()


def _quiet() -> Any:
    from rich.console import Console

    return Console(file=open(os.devnull, "w"))  # noqa: SIM115


def check_pipeline(settings_: Settings, valid: list, hostile: list[bytes], far: list[str]) -> None:
    from rtml.features.offline import read_minutes_df

    counters = ingest_counters(settings_)
    assert counters["valid"] == len(valid) + len(far)  # far clocks pass ingestion: no wall clock
    assert counters["dead_letters"] == len(hostile)
    engine = aggregate_counters(settings_)
    assert engine["late"] == 0 and engine["lag_events"] == 0

    frame = read_minutes_df(settings_)
    got = list(
        zip(
            frame["minute"].map(lambda m: int(m.timestamp() * 1000)),
            frame["tx_count"],
            frame["fee_total_sat"],
            strict=True,
        )
    )
    want = [(int(m.minute.timestamp() * 1000), m.tx_count, m.fee_total_sat) for m in reference_minutes(valid)]
    assert got == want

    with open_ingest_store(settings_) as store:
        letters = store.dead_letters(limit=10_000)
    assert all(len(d.raw.encode()) <= DEAD_LETTER_MAX_BYTES for d in letters)
    assert sorted(d.raw_sha256 for d in letters if d.source == "replay") == sorted(
        hashlib.sha256(line).hexdigest() for line in hostile
    )
    outliers = [json.loads(d.raw)["tx_hash"] for d in letters if d.source == "aggregate"]
    assert sorted(outliers) == sorted(far)
    assert all(d.reason.startswith("clock outlier") for d in letters if d.source == "aggregate")


def test_hostile_frames_never_stop_corrupt_or_slow_the_pipeline(backend_settings: Settings, tmp_path: Path) -> None:
    base = backend_settings
    runs = iter(range(1_000))

    @settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(streams())
    def prop(stream: tuple[list, list[bytes], list[bytes], list[str]]) -> None:
        valid, lines, hostile, far = stream
        tmp = tmp_path / f"run-{next(runs)}"
        one = get_settings(data_dir=tmp / "data", profile=base.profile)
        try:
            run_pipeline(one, lines, tmp)
            check_pipeline(one, valid, hostile, far)
        finally:
            if one.profile == "services":
                from rtml.ops.purge import execute_purge, plan_purge

                execute_purge(one, plan_purge(one, services=True))

    prop()


def test_a_10_MB_frame_is_kept_as_a_bounded_prefix_with_its_length_and_hash(
    backend_settings: Settings,
) -> None:
    frame = '{"op":"utx","x":"' + "z" * 10_000_000 + '"}'
    with Ingestor(backend_settings) as ingestor:
        counts = ingestor.ingest([frame, utx(1, T0, 5)], "ws")
    assert (counts.valid, counts.dead_letters) == (1, 1)
    with open_ingest_store(backend_settings) as store:
        (letter,) = store.dead_letters()
    assert len(letter.raw.encode()) == DEAD_LETTER_MAX_BYTES and frame.startswith(letter.raw)
    assert letter.raw_bytes == len(frame) and letter.raw_sha256 == hashlib.sha256(frame.encode()).hexdigest()


def test_a_replay_line_longer_than_the_frame_bound_is_never_held_whole(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    long = b"q" * (3 * 1024 + 17)
    path.write_bytes(b"a\n" + long + b"\nb\n")
    a, over, b = read_lines(path, max_bytes=1024)
    assert (a, b) == (b"a", b"b")
    assert not isinstance(over, bytes)
    assert (over.length, over.sha256, len(over.head)) == (len(long), hashlib.sha256(long).hexdigest(), 1025)


def test_a_far_future_line_does_not_stall_a_paced_replay() -> None:
    now = [0.0]
    lines = [utx(i, T0 + i * 1000, 1) for i in range(5)]
    lines.insert(2, utx(99, T0 + 8 * 365 * 86_400_000, 1))  # 2032
    batches = list(
        paced_batches(lines, 1.0, clock=lambda: now[0], wait=lambda s: now.__setitem__(0, now[0] + s))
    )
    assert sum(len(b) for b in batches) == 6
    assert now[0] < 10  # four seconds of real events, not eight years


def test_dlq_show_and_events_print_refused_text_literally(settings: Settings) -> None:
    from rtml.monitoring.events import EventLog

    nasty = "[/bold] [red]x\x1b[2J\x1b]0;owned\x07\u202e"
    with Ingestor(settings) as ingestor:
        ingestor.ingest([nasty], "ws")
    log = EventLog(settings)
    try:
        log.record("ingest.refused", text=nasty)
    finally:
        log.close()
    env = {**os.environ, "COLUMNS": "400"}
    for command in (["dlq", "show"], ["events"]):
        out = subprocess.run(
            [sys.executable, "-m", "rtml", *command], capture_output=True, text=True, timeout=120, env=env
        )
        assert out.returncode == 0, out.stderr[-2000:]
        assert "[/bold] [red]x\\x1b[2J\\x1b]0;owned\\x07\\u202e" in out.stdout
        assert "\x1b" not in out.stdout and "\x07" not in out.stdout and "\u202e" not in out.stdout


@pytest.mark.parametrize("source", ["ws", "rest"])
def test_no_exception_ends_a_live_loop_it_is_counted_and_retried(
    source: str, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store fails twice (as a locked or restarting store would): the live loop logs,
    counts, retries and then delivers everything (a websocket batch is kept and re-sent)."""
    from blockchain_server import BlockchainServer
    from test_ingest_live import fast_settings, wait_for

    from rtml.sources.blockchain_rest import run_rest
    from rtml.sources.blockchain_ws import run_ws

    frames = [utx(i, T0 + i * 1000, 7).decode() for i in range(50)]
    settings = fast_settings(settings)
    plans = [[("send", 50), ("idle",)]]
    with (
        BlockchainServer(
            frames, plans, rest_window=100, rest_429=0, rest_emit=50 if source == "rest" else 0
        ) as server,
        Ingestor(settings) as ingestor,
    ):
        real = ingestor._store
        failures = [RuntimeError("database is locked"), OSError("store restarting")]

        def flaky(*args: Any) -> Any:
            if failures and args[0]:  # a batch with frames in it
                raise failures.pop(0)
            return real(*args)

        monkeypatch.setattr(ingestor, "_store", flaky)
        stop = threading.Event()
        result: list[Any] = []

        def client() -> None:
            if source == "ws":
                result.append(
                    run_ws(
                        ingestor, settings.ingest, ws_url=server.ws_url, rest_url=server.rest_url, stop=stop
                    )
                )
            else:
                result.append(run_rest(ingestor, settings.ingest, rest_url=server.rest_url, stop=stop))

        thread = threading.Thread(target=client)
        thread.start()
        try:
            wait_for(lambda: ingest_counters(settings)["appended"] >= 50 or bool(result), "every transaction")
            assert not result  # still running
        finally:
            stop.set()
            thread.join(30)
        assert result[0].errors == 2 and not failures
        assert ingest_counters(settings)["appended"] == 50


def test_the_same_hostile_frames_over_the_live_websocket(settings: Settings, shared_data: Path) -> None:
    """The client never exits, the stored set equals the truth, every hostile frame is a dead letter."""
    import time

    from blockchain_server import BlockchainServer
    from test_ingest_live import fast_settings, play_ws, real_frames, stored, truth

    frames = real_frames(shared_data, 200)
    now_s = int(time.time())
    hostile = [hostile_frame(kind, k, T0).decode("utf-8", "replace") for k, kind in enumerate(KINDS[:-1])]
    hostile.append(utx(30_000, (now_s + 86_400) * 1000, 5).decode())  # a day ahead of the wall clock
    row = {
        "tx_hash": _hash(40_000),
        "event_time": T0,
        "fee_sat": 9,
        "size": 99,
        "source": "me",
        "ingest_time": 1,
    }
    too_big = '{"op":"utx","pad":"' + "w" * MAX_FRAME_BYTES + '"}'
    deep_rest = '{"hash":' * 5000 + "1" + "}" * 5000  # too deep for any JSON parser: split out alone
    rest_hostile = [deep_rest, json.dumps({"hash": _hash(40_001), "time": now_s, "size": 9, "fee": 2**64})]
    plans = [
        [
            ("await_rest",),
            ("send", 50),
            *[("garbage", h) for h in hostile],
            ("garbage", json.dumps(row)),
            ("send", 50),
        ],
        [("await_rest",), ("send", 20), ("garbage", too_big), ("stall",)],
        [("await_rest",), ("send", 20), ("offline", 10), ("drop",)],
        [("await_rest",), ("idle",)],
    ]
    settings = fast_settings(settings)
    with BlockchainServer(frames, plans, rest_window=100, rest_429=0, rest_hostile=rest_hostile) as server:
        result, ran_through = play_ws(settings, server, len(frames) + 1)
        assert ran_through  # the client never exited on its own
        assert not server.errors
        events = stored(settings)
        assert set(events) == truth(frames) | {(_hash(40_000), 9)} and len(events) == len(frames) + 1
        with open_ingest_store(settings) as store:
            letters = store.dead_letters(limit=10_000)
        from rtml.stream import open_stream

        with open_stream(settings) as stream:
            (mine,) = [e for _, e in stream.read(None, 1_000) if e.tx_hash == _hash(40_000)]
        assert mine.source == "ws" and mine.ingest_time > now_s * 1000 - 60_000  # stamped by the client

    by_hash = {d.raw_sha256: d for d in letters}
    for frame in hostile:
        assert hashlib.sha256(frame.encode()).hexdigest() in by_hash, frame[:80]
    assert "ahead of the ingest time" in by_hash[hashlib.sha256(hostile[-1].encode()).hexdigest()].reason
    assert any("websocket frame over" in d.reason for d in letters)
    rest_reasons = {d.reason for d in letters if d.source == "rest"}
    assert any(
        r.startswith("fee 18446744073709551616 is above 2,100,000,000,000,000 sat") for r in rest_reasons
    )
    assert "not JSON: nested too deep" in rest_reasons  # refused alone: its REST peers got through
    assert all(len(d.raw.encode()) <= DEAD_LETTER_MAX_BYTES for d in letters)
    stats = result[0]
    assert stats.connects == len(plans) and stats.errors == 0
