"""The one validator of raw input: every rule, each way."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtml.contracts import (
    MAX_MONEY_SAT,
    MAX_TX_SIZE,
    InvalidInput,
    MinuteFeatures,
    TxEvent,
    dead_letter,
    parse_message,
    printable,
    raw_text,
)

HASH = "ab" * 32


def utx(**overrides: object) -> dict:
    x = {
        "hash": HASH,
        "time": 1_700_000_000,
        "size": 250,
        "inputs": [{"prev_out": {"value": 10_000}}, {"prev_out": {"value": "5000"}}],
        "out": [{"value": 14_000}],
    }
    x.update(overrides)
    return {"op": "utx", "x": x}


def test_utx_fee_is_inputs_minus_outputs_and_strings_are_accepted() -> None:
    event = parse_message(json.dumps(utx()).encode(), "ws", 123)
    assert event == TxEvent(HASH, 1_700_000_000_000, 1_000, 250, "ws", 123)


def test_rest_transaction_with_matching_fee_field() -> None:
    tx = utx(fee=1_000)["x"]
    assert parse_message(tx, "rest", 1).fee_sat == 1_000


def test_fee_field_alone_is_enough() -> None:
    tx = {"hash": HASH, "time": 1_700_000_000, "size": 200, "fee": "321"}
    assert parse_message(tx, "rest", 1).fee_sat == 321


def test_coinbase_has_zero_fee() -> None:
    event = parse_message(utx(inputs=[{"prev_out": None}], out=[{"value": 625_000_000}]), "ws", 1)
    assert event.fee_sat == 0


def test_txevent_rows_round_trip() -> None:
    event = TxEvent(HASH, 1_700_000_000_123, 42, 180, "replay", 7)
    assert parse_message(json.dumps(event.to_dict()), "x", 0) == event


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe", "not UTF-8"),
        ("{nope", "not JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"op": "pong"}', "not a transaction message"),
        ('{"op": "utx"}', "without an 'x' object"),
        ('{"foo": 1}', "unknown message"),
        (json.dumps(utx(hash="xyz")), "hash is not 64 hex"),
        (json.dumps(utx(time=None)), "time is missing"),
        (json.dumps(utx(time=1_700_000_000_000)), "not a plausible epoch second"),
        (json.dumps(utx(out=[{"value": 99_999}])), "fee is negative"),
        (json.dumps(utx(fee=7)), "differs from inputs - outputs"),
        (json.dumps(utx(size=0)), "size is not positive"),
        (json.dumps(utx(inputs=[{"prev_out": {"value": 1.5}}])), "not an integer"),
        (json.dumps(utx(inputs=[{"prev_out": None}, {"prev_out": {"value": 1}}])), "not a coinbase"),
        (json.dumps({"hash": HASH, "time": 1_700_000_000, "size": 1}), "no fee"),
        (
            json.dumps({"tx_hash": HASH, "event_time": 1, "fee_sat": 1, "size": 1}),
            "plausible epoch millisecond",
        ),
    ],
)
def test_invalid_input_says_why(raw: bytes | str, reason: str) -> None:
    with pytest.raises(InvalidInput) as err:
        parse_message(raw, "ws", 0)
    assert reason in err.value.reason


@given(
    st.one_of(
        st.binary(max_size=300),
        st.text(max_size=300),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
            lambda children: (
                st.lists(children, max_size=4)
                | st.dictionaries(
                    st.sampled_from(
                        [
                            "op",
                            "x",
                            "hash",
                            "time",
                            "size",
                            "fee",
                            "inputs",
                            "out",
                            "prev_out",
                            "value",
                            "tx_hash",
                            "event_time",
                            "fee_sat",
                        ]
                    ),
                    children,
                    max_size=6,
                )
            ),
            max_leaves=30,
        ),
    )
)
def test_nothing_escapes_but_invalid_input(raw: object) -> None:
    try:
        event = parse_message(raw if isinstance(raw, bytes | str | dict) else json.dumps(raw), "fuzz", 0)
    except InvalidInput as err:
        assert err.reason
    else:
        assert event.fee_sat >= 0 and event.size > 0 and len(event.tx_hash) == 64


def test_minute_features_of_an_empty_window() -> None:
    row = MinuteFeatures.from_window(1_700_000_040_000 - 40_000, 0, 0, revision=1)
    assert row.fee_avg_sat is None
    assert (row.event_time - row.minute).total_seconds() == 60


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"fee": 2**63, "inputs": [], "out": []}, "above 2,100,000,000,000,000 sat"),
        ({"inputs": [{"prev_out": {"value": 2**62}}], "out": []}, "outside 0..2,100,000,000,000,000 sat"),
        ({"out": [{"value": -1}]}, "outside 0..2,100,000,000,000,000 sat"),
        ({"size": 4_000_001}, "above 4,000,000 bytes"),
        ({"time": 1_230_940_799}, "2009-01-03"),
        ({"out": [{"value": 1}] * 444_445}, "more than 444,444 fit"),
        ({"inputs": [{"prev_out": {"value": 1}}] * 97_561}, "more than 97,560 fit"),
        ({"size": "9" * 5000}, "at most 20 digits"),
    ],
)
def test_bounds_come_from_bitcoins_rules_and_reasons_name_field_and_bound(
    overrides: dict, reason: str
) -> None:
    with pytest.raises(InvalidInput) as err:
        parse_message(utx(**overrides), "replay", 0)
    assert reason in err.value.reason


def test_the_largest_legal_fee_and_size_are_accepted() -> None:
    tx = {"hash": HASH, "time": 1_700_000_000, "size": MAX_TX_SIZE, "fee": MAX_MONEY_SAT}
    event = parse_message(tx, "rest", 1)
    assert (event.fee_sat, event.size) == (MAX_MONEY_SAT, MAX_TX_SIZE)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ('{"op":"utx","x":{"hash":"' + HASH + '","time":1700000000,"size":' + "9" * 5000 + "}}", "not JSON"),
        ("[" * 100_000 + "]" * 100_000, "not JSON: nested too deep"),
        ('{"hash":"\\ud800' + "a" * 63 + '","time":1}', "hash is not 64 hex characters: '\\ud800"),
        ("{" + '"a":' * 10 + "1" + "}" * 10, "not JSON"),
    ],
)
def test_numbers_too_long_nesting_too_deep_and_bad_encodings_are_reasons_not_crashes(
    raw: str, reason: str
) -> None:
    with pytest.raises(InvalidInput) as err:
        parse_message(raw, "ws", 0)
    assert reason in err.value.reason and err.value.reason.isascii()


def test_live_sources_refuse_the_future_and_stamp_source_and_ingest_time() -> None:
    now = 1_700_000_000_000
    ahead = json.dumps(utx(time=now // 1000 + 301))
    with pytest.raises(InvalidInput, match="301 s ahead of the ingest time"):
        parse_message(ahead, "ws", now, max_future_ms=300_000)
    assert parse_message(ahead, "replay", now).event_time == now + 301_000  # no wall clock in a replay
    row = json.dumps(
        {"tx_hash": HASH, "event_time": now, "fee_sat": 1, "size": 1, "source": "me", "ingest_time": 1}
    )
    assert parse_message(row, "ws", now, max_future_ms=300_000) == TxEvent(HASH, now, 1, 1, "ws", now)
    assert parse_message(row, "replay", now) == TxEvent(HASH, now, 1, 1, "me", 1)


def test_dead_letters_keep_a_bounded_prefix_the_full_length_and_a_hash() -> None:
    frame = ("é" * 100_000).encode() + b"\xff"
    for raw in (frame, frame.decode("utf-8", "replace"), {"junk": "é" * 100_000}):
        letter = dead_letter(raw, "r", "ws", 0, max_bytes=1001)
        assert len(letter.raw.encode()) <= 1001 and letter.raw.startswith(
            "é" if not isinstance(raw, dict) else "{"
        )
        whole = raw if isinstance(raw, bytes) else raw_text(raw).encode()  # type: ignore[arg-type]
        assert letter.raw_bytes == len(whole) and letter.raw_sha256 == hashlib.sha256(whole).hexdigest()
    assert dead_letter(b"\xff\x00", "r", "ws", 0).raw == "\\xff\x00"
    deep: dict = {}
    for _ in range(5000):
        deep = {"x": deep}
    assert "cannot be shown" in dead_letter(deep, "r", "rest", 0).raw


def test_printable_escapes_control_characters() -> None:
    assert printable("a\x1b[31mb\nc\u202ed [/bold]") == "a\\x1b[31mb\\nc\\u202ed [/bold]"
    assert printable("plain [b]text[/b]") == "plain [b]text[/b]"


def test_a_replay_row_cannot_smuggle_an_unstorable_source_or_ingest_time() -> None:
    row = {"tx_hash": HASH, "event_time": 1_700_000_000_000, "fee_sat": 1, "size": 1}
    assert parse_message({**row, "source": "\ud800" * 3}, "replay", 5).source == "replay"
    assert parse_message({**row, "source": "x" * 65}, "replay", 5).source == "replay"
    with pytest.raises(InvalidInput, match="ingest_time"):
        parse_message({**row, "ingest_time": 2**63}, "replay", 5)
