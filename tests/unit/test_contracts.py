"""The one validator of raw input: every rule, each way."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtml.contracts import InvalidInput, MinuteFeatures, TxEvent, parse_message

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
