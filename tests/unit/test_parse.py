"""The batch validator: its fast path agrees with `parse_message`, nothing escapes, every refusal says why."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from rtml.contracts import InvalidInput, Oversized, parse_batch, parse_message
from rtml.contracts.batch import _fast_row

HASH = "0f" * 32


def frame(**overrides: Any) -> dict[str, Any]:
    x: dict[str, Any] = {
        "hash": HASH,
        "time": 1_606_176_015,
        "size": 223,
        "vin_sz": 2,
        "relayed_by": "0.0.0.0",
        "inputs": [{"sequence": 1, "prev_out": {"value": 70_000, "n": 0}}, {"prev_out": {"value": 5_000}}],
        "out": [{"value": 60_000, "n": 0}, {"value": 14_000}],
    }
    x.update(overrides)
    return {"op": "utx", "x": x}


def slow_row(raw: Any) -> tuple | None:
    try:
        e = parse_message(raw, "t", 5)
    except InvalidInput:
        return None
    return (e.tx_hash, e.event_time, e.fee_sat, e.size, e.source, e.ingest_time)


def test_ordinary_frame_takes_the_fast_path_and_matches() -> None:
    raw = json.dumps(frame()).encode()
    assert _fast_row(raw, "t", 5) == (HASH, 1_606_176_015_000, 1_000, 223, "t", 5) == slow_row(raw)


def test_unusual_but_valid_input_falls_through_to_the_full_validator() -> None:
    unusual = [
        frame(inputs=[{"prev_out": {"value": "70000"}}, {"prev_out": {"value": 5_000}}]),  # string amount
        frame(inputs=[{"prev_out": None}], out=[{"value": 625_000_000}]),  # coinbase
        frame(size=223.0),  # integral float
        frame(hash=HASH.upper()),
    ]
    rows, dead = parse_batch([json.dumps(m) for m in unusual], "t", 5)
    assert not dead
    assert rows == [slow_row(json.dumps(m)) for m in unusual]
    assert all(r[0] == HASH for r in rows)


def test_refusals_become_dead_letters_with_reasons_and_raw_kept() -> None:
    raws: list[Any] = [
        "garbage",
        b"\xff\x00",
        json.dumps(frame(out=[{"value": 10**9}])),
        json.dumps(frame(hash="nothex")),
        {"hash": HASH},
        json.dumps(frame()),
    ]
    rows, dead = parse_batch(raws, "ws", 9)
    assert len(rows) == 1 and len(dead) == 5
    assert [d.reason.split(":")[0] for d in dead] == [
        "not JSON",
        "not UTF-8",
        "fee is negative",
        "hash is not 64 hex characters",
        "time is missing",
    ]
    assert dead[0].raw == "garbage" and dead[1].raw == "\\xff\x00"
    assert json.loads(dead[4].raw) == {"hash": HASH}
    assert all(d.source == "ws" and d.ingest_time == 9 for d in dead)


# Near-valid frames: every field may be replaced by something odd, so both paths get exercised.
ODD = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.sampled_from(["12", " 7 ", "1e3", "-5", HASH, HASH.upper(), "0x10"]),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.sampled_from(["value", "prev_out"]), st.integers(), max_size=2),
)
AMOUNT = st.one_of(st.integers(min_value=0, max_value=10**9), ODD)
INPUT = st.fixed_dictionaries({"prev_out": st.one_of(st.fixed_dictionaries({"value": AMOUNT}), ODD)})
OUTPUT = st.fixed_dictionaries({"value": AMOUNT})
TX = st.fixed_dictionaries(
    {},
    optional={
        "hash": st.one_of(
            st.just(HASH), st.text(alphabet="0123456789abcdefABCDEF", min_size=63, max_size=65), ODD
        ),
        "time": st.one_of(st.integers(min_value=1_200_000_000, max_value=4_200_000_000), ODD),
        "size": st.one_of(st.integers(min_value=-5, max_value=100_000), ODD),
        "inputs": st.one_of(st.lists(INPUT, max_size=4), ODD),
        "out": st.one_of(st.lists(OUTPUT, max_size=4), ODD),
        "fee": st.one_of(st.integers(min_value=-10, max_value=10**6), ODD),
    },
)
MESSAGE = st.one_of(
    st.fixed_dictionaries({"op": st.sampled_from(["utx", "utx", "pong", 1]), "x": st.one_of(TX, ODD)}),
    TX,
)


@settings(max_examples=400, deadline=None)
@given(MESSAGE, st.booleans())
def test_fuzz_fast_path_agrees_and_refusals_have_reasons(message: Any, as_bytes: bool) -> None:
    raw = json.dumps(message)
    wire = raw.encode() if as_bytes else raw
    fast = _fast_row(wire, "t", 5)
    slow = slow_row(wire)
    if fast is not None:
        assert fast == slow
    rows, dead = parse_batch([wire], "t", 5)
    assert len(rows) + len(dead) == 1
    assert rows == ([slow] if slow is not None else [])
    for d in dead:
        assert d.reason and d.raw == raw


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=200), st.text(max_size=200)), max_size=5))
def test_fuzz_arbitrary_bytes_never_escape(raws: list[bytes | str]) -> None:
    rows, dead = parse_batch(raws, "fuzz", 0)
    assert len(rows) + len(dead) == len(raws)
    assert all(d.reason for d in dead)
    assert all(r[2] >= 0 and r[3] > 0 and len(r[0]) == 64 for r in rows)


def test_one_hostile_item_is_dead_lettered_alone_and_the_batch_goes_on() -> None:
    deep: dict[str, Any] = {"hash": HASH}
    for _ in range(3000):
        deep = {"x": deep, "hash": HASH}
    hostile: list[Any] = [
        json.dumps(frame(inputs=[{"prev_out": {"value": 2**63}}])),  # beyond 21M BTC, beyond int64
        json.dumps(frame(size=10**30)),  # msgspec decodes this to a Python int: the bound refuses it
        '{"op":"utx","x":{"size":' + "7" * 5000 + "}}",  # past CPython's int-string limit
        "[" * 50_000,
        deep,
        '{"hash":"\ud800"}',  # a lone surrogate: reasons and raw text stay storable
        Oversized(b'{"op":"utx"', 10**9, "ab" * 32),
        json.dumps(frame(time=2_000_000_000)),  # 2033: fine for a replay, not for a live source
    ]
    good = json.dumps(frame())
    rows, dead = parse_batch([good, *hostile, good], "ws", 1_606_176_015_000, max_future_ms=300_000)
    assert len(rows) == 2 and len(dead) == len(hostile)
    assert all(d.reason.isascii() and d.raw.encode("utf-8") for d in dead)  # storable as UTF-8
    assert dead[-2].raw_bytes == 10**9 and "over the" in dead[-2].reason
    assert "ahead of the ingest time" in dead[-1].reason


@settings(max_examples=200, deadline=None)
@given(MESSAGE, st.integers(min_value=1_200_000_000_000, max_value=4_200_000_000_000))
def test_fuzz_fast_path_agrees_for_live_sources(message: Any, now: int) -> None:
    wire = json.dumps(message).encode()
    fast = _fast_row(wire, "ws", now, 300_000)
    try:
        e = parse_message(wire, "ws", now, 300_000)
        slow: tuple | None = (e.tx_hash, e.event_time, e.fee_sat, e.size, e.source, e.ingest_time)
    except InvalidInput:
        slow = None
    if fast is not None:
        assert fast == slow
    assert parse_batch([wire], "ws", now, max_future_ms=300_000)[0] == ([slow] if slow else [])
