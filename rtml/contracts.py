"""The data contracts every stage and backend honours, and the one validator of raw input.

`TxEvent` and `MinuteFeatures` are slotted dataclasses rather than pydantic models because
ingestion handles hundreds of thousands of them a second; `Forecast` crosses the HTTP API,
so it is a pydantic model. `parse_message` is the only place raw input is judged: it turns
anything (wire bytes, a blockchain.com `utx` message, a REST transaction, a TxEvent row)
into a `TxEvent` or raises `InvalidInput` with a reason precise enough to fix the sender.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
from pydantic import BaseModel, Field

MINUTE_MS = 60_000
# Plausible transaction times: the genesis block (2009-01-03) to 2100; anything else is a unit error.
_MIN_TIME_S = 1_230_940_800
_MAX_TIME_S = 4_102_444_800
_HEX = frozenset("0123456789abcdef")


class InvalidInput(ValueError):
    """Raw input that breaks a rule; `reason` says which, for the dead-letter store."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class TxEvent:
    """One transaction. Times are UTC epoch milliseconds."""

    tx_hash: str
    event_time: int
    fee_sat: int
    size: int
    source: str
    ingest_time: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Input that was refused, kept whole with the reason so nothing is lost."""

    raw: str
    reason: str
    source: str
    ingest_time: int


@dataclass(frozen=True, slots=True)
class MinuteFeatures:
    """One closed 1-minute window. `event_time` is the window end, not the write time."""

    minute: datetime
    tx_count: int
    fee_total_sat: int
    fee_avg_sat: float | None
    event_time: datetime
    revision: int

    COLUMNS = ("minute", "tx_count", "fee_total_sat", "fee_avg_sat", "event_time", "revision")

    @classmethod
    def from_window(cls, minute_ms: int, tx_count: int, fee_total_sat: int, revision: int) -> MinuteFeatures:
        """Build from a window's start (epoch ms) and sums; empty windows get a null average."""
        return cls(
            minute=ms_to_datetime(minute_ms),
            tx_count=tx_count,
            fee_total_sat=fee_total_sat,
            fee_avg_sat=fee_total_sat / tx_count if tx_count else None,
            event_time=ms_to_datetime(minute_ms + MINUTE_MS),
            revision=revision,
        )


class Forecast(BaseModel):
    """Quantiles of `fee_avg_sat` for `target_minute`, 5 minutes after the last closed minute."""

    target_minute: datetime
    p10: float
    p50: float
    p90: float
    model_version: str
    feature_time: datetime = Field(description="End of the last closed minute the forecast used.")
    horizon_min: int = 5


def ms_to_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def datetime_to_ms(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1000)


def _int(value: Any, what: str) -> int:
    """Satoshi amounts and sizes: ints, integral floats, or decimal strings (old REST responses)."""
    if isinstance(value, bool):
        raise InvalidInput(f"{what} is a boolean, expected an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise InvalidInput(f"{what} is not an integer: {value!r}")
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            raise InvalidInput(f"{what} is not an integer: {value[:40]!r}") from None
    if value is None:
        raise InvalidInput(f"{what} is missing")
    raise InvalidInput(f"{what} has type {type(value).__name__}, expected an integer")


def _hash(value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidInput("hash is missing" if value is None else "hash is not a string")
    tx_hash = value.lower()
    if len(tx_hash) != 64 or not _HEX.issuperset(tx_hash):
        raise InvalidInput(f"hash is not 64 hex characters: {value[:80]!r}")
    return tx_hash


def _sum_values(items: Any, what: str, *, allow_coinbase: bool) -> tuple[int, bool]:
    """Σ value over inputs' prev_out (or outputs); returns (sum, is_coinbase)."""
    if not isinstance(items, list):
        raise InvalidInput(f"{what} is not a list")
    total = 0
    coinbase = 0
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise InvalidInput(f"{what}[{i}] is not an object")
        if allow_coinbase:
            prev = item.get("prev_out")
            if prev is None:
                coinbase += 1
                continue
            if not isinstance(prev, Mapping):
                raise InvalidInput(f"{what}[{i}].prev_out is not an object")
            value = _int(prev.get("value"), f"{what}[{i}].prev_out.value")
        else:
            value = _int(item.get("value"), f"{what}[{i}].value")
        if value < 0:
            raise InvalidInput(f"{what}[{i}] value is negative: {value}")
        total += value
    if coinbase and coinbase != len(items):
        raise InvalidInput(f"{what}: {coinbase} of {len(items)} inputs have no prev_out (not a coinbase)")
    return total, bool(items) and coinbase == len(items)


def _from_blockchain_tx(tx: Mapping[str, Any], source: str, ingest_time: int) -> TxEvent:
    """A blockchain.com transaction (websocket `x` or a REST `txs` item)."""
    tx_hash = _hash(tx.get("hash"))
    if tx.get("time") is None:
        raise InvalidInput("time is missing")
    time_s = _int(tx.get("time"), "time")
    if not _MIN_TIME_S <= time_s <= _MAX_TIME_S:
        raise InvalidInput(f"time {time_s} is not a plausible epoch second")
    size = _int(tx.get("size"), "size")
    if size <= 0:
        raise InvalidInput(f"size is not positive: {size}")
    fee_field = tx.get("fee")
    fee_given = None if fee_field is None else _int(fee_field, "fee")
    fee_computed = None
    if "inputs" in tx or "out" in tx:
        inputs, coinbase = _sum_values(tx.get("inputs"), "inputs", allow_coinbase=True)
        outputs, _ = _sum_values(tx.get("out"), "out", allow_coinbase=False)
        fee_computed = 0 if coinbase else inputs - outputs
    if fee_given is not None and fee_computed is not None and fee_given != fee_computed:
        raise InvalidInput(f"fee field {fee_given} differs from inputs - outputs = {fee_computed}")
    fee = fee_given if fee_given is not None else fee_computed
    if fee is None:
        raise InvalidInput("no fee: neither a fee field nor inputs and outputs")
    if fee < 0:
        raise InvalidInput(f"fee is negative: {fee} (outputs exceed inputs)")
    return TxEvent(tx_hash, time_s * 1000, fee, size, source, ingest_time)


def _from_row(row: Mapping[str, Any], source: str, ingest_time: int) -> TxEvent:
    """A TxEvent row (replay files, the stream's own records)."""
    tx_hash = _hash(row.get("tx_hash"))
    event_time = _int(row.get("event_time"), "event_time")
    if not _MIN_TIME_S * 1000 <= event_time <= _MAX_TIME_S * 1000:
        raise InvalidInput(f"event_time {event_time} is not a plausible epoch millisecond")
    fee = _int(row.get("fee_sat"), "fee_sat")
    if fee < 0:
        raise InvalidInput(f"fee_sat is negative: {fee}")
    size = _int(row.get("size"), "size")
    if size <= 0:
        raise InvalidInput(f"size is not positive: {size}")
    row_source = row.get("source")
    return TxEvent(
        tx_hash,
        event_time,
        fee,
        size,
        row_source if isinstance(row_source, str) and row_source else source,
        _int(row["ingest_time"], "ingest_time") if row.get("ingest_time") is not None else ingest_time,
    )


def parse_message(raw: bytes | str | Mapping[str, Any], source: str, ingest_time: int) -> TxEvent:
    """Turn any raw input into a TxEvent, or raise InvalidInput saying what is wrong."""
    obj: Any = raw
    if isinstance(raw, bytes | bytearray):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    if isinstance(raw, str):
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise InvalidInput(f"not JSON: {exc}") from None
    if not isinstance(obj, Mapping):
        raise InvalidInput(f"expected a JSON object, got {type(obj).__name__}")
    if "op" in obj:
        if obj["op"] != "utx":
            raise InvalidInput(f"not a transaction message: op={str(obj['op'])[:40]!r}")
        tx = obj.get("x")
        if not isinstance(tx, Mapping):
            raise InvalidInput("utx message without an 'x' object")
        return _from_blockchain_tx(tx, source, ingest_time)
    if "tx_hash" in obj:
        return _from_row(obj, source, ingest_time)
    if "hash" in obj:
        return _from_blockchain_tx(obj, source, ingest_time)
    raise InvalidInput("unknown message: no 'op', 'hash' or 'tx_hash' key")


def raw_text(raw: bytes | str | Mapping[str, Any]) -> str:
    """The raw input as text, for the dead-letter store (undecodable bytes kept escaped)."""
    if isinstance(raw, bytes | bytearray):
        return bytes(raw).decode("utf-8", errors="backslashreplace")
    if isinstance(raw, str):
        return raw
    try:
        return json.dumps(raw, default=str)
    except (TypeError, ValueError):
        return repr(raw)


# The fast path of the validator. `parse_message` judges one message in ~14 µs; ingestion must
# judge 200k a second. Wire frames are decoded straight into the few fields the rules need
# (msgspec, strict types) and the common case is decided here; anything unusual (string or
# float amounts, coinbase inputs, non-ASCII bytes, any broken rule) falls through to
# `parse_message`, which stays the single authority on what is valid and on every reason.
# tests/unit/test_parse.py checks the two agree on every accepted message.
Row = tuple[str, int, int, int, str, int]
_HEX_HASH = re.compile(r"[0-9a-fA-F]{64}", re.ASCII).fullmatch


class _WirePrevOut(msgspec.Struct):
    value: int


class _WireInput(msgspec.Struct):
    prev_out: _WirePrevOut


class _WireOutput(msgspec.Struct):
    value: int


class _WireTx(msgspec.Struct, gc=False):
    hash: str
    time: int
    size: int
    inputs: list[_WireInput]
    out: list[_WireOutput]
    fee: int | None = None


class _WireMessage(msgspec.Struct, gc=False):
    op: str
    x: _WireTx


_decode_wire = msgspec.json.Decoder(_WireMessage).decode


def _fast_row(raw: bytes | str, source: str, ingest_time: int) -> Row | None:
    """The row of an ordinary `utx` frame, or None when `parse_message` must judge it."""
    if not raw.isascii():
        return None
    try:
        msg = _decode_wire(raw)
    except (msgspec.DecodeError, RecursionError):
        return None
    tx = msg.x
    if msg.op != "utx" or not _HEX_HASH(tx.hash) or not tx.inputs or tx.size <= 0:
        return None
    if not _MIN_TIME_S <= tx.time <= _MAX_TIME_S:
        return None
    total_in = 0
    for item in tx.inputs:
        value = item.prev_out.value
        if value < 0:
            return None
        total_in += value
    for output in tx.out:
        value = output.value
        if value < 0:
            return None
        total_in -= value
    if total_in < 0 or (tx.fee is not None and tx.fee != total_in):
        return None
    return (tx.hash.lower(), tx.time * 1000, total_in, tx.size, source, ingest_time)


def parse_batch(
    raws: Iterable[bytes | str | Mapping[str, Any]], source: str, ingest_time: int
) -> tuple[list[Row], list[DeadLetter]]:
    """Judge many raw inputs at once: rows in TxEvent field order for the valid, dead letters for the rest."""
    rows: list[Row] = []
    dead: list[DeadLetter] = []
    keep = rows.append
    for raw in raws:
        row = _fast_row(raw, source, ingest_time) if isinstance(raw, bytes | str) else None
        if row is None:
            try:
                e = parse_message(raw, source, ingest_time)
            except InvalidInput as err:
                dead.append(DeadLetter(raw_text(raw), err.reason, source, ingest_time))
                continue
            row = (e.tx_hash, e.event_time, e.fee_sat, e.size, e.source, e.ingest_time)
        keep(row)
    return rows, dead
