"""The one validator of raw input: `parse_message` turns anything (wire bytes, a blockchain.com
`utx` message, a REST transaction, a TxEvent row) into a `TxEvent` or raises `InvalidInput`
with a reason precise enough to fix the sender; `dead_letter` keeps a bounded record of what
it refused.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from rtml.contracts.records import (
    _MAX_TIME_S,
    _MIN_TIME_S,
    DEAD_LETTER_MAX_BYTES,
    MAX_FRAME_BYTES,
    MAX_INPUTS,
    MAX_MONEY_SAT,
    MAX_OUTPUTS,
    MAX_TX_SIZE,
    DeadLetter,
    Oversized,
    TxEvent,
)

_HEX = frozenset("0123456789abcdef")
# A replay row's own `source` is kept only when it is a plain name (any store accepts it).
_SOURCE_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}", re.ASCII).fullmatch


class InvalidInput(ValueError):
    """Raw input that breaks a rule; `reason` says which, for the dead-letter store."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _show(value: str, limit: int) -> str:
    """A short quote of hostile text for a reason: ASCII only, so any store accepts it."""
    return ascii(value[:limit]) + ("..." if len(value) > limit else "")


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
        digits = value.strip()
        # Longer than any bound in digits: refused before int() (CPython refuses > 4,300 digits).
        if len(digits) > 20:
            raise InvalidInput(f"{what} is not an integer of at most 20 digits: {_show(value, 40)}")
        try:
            return int(digits)
        except ValueError:
            raise InvalidInput(f"{what} is not an integer: {_show(value, 40)}") from None
    if value is None:
        raise InvalidInput(f"{what} is missing")
    raise InvalidInput(f"{what} has type {type(value).__name__}, expected an integer")


def _hash(value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidInput("hash is missing" if value is None else "hash is not a string")
    tx_hash = value.lower()
    if len(tx_hash) != 64 or not _HEX.issuperset(tx_hash):
        raise InvalidInput(f"hash is not 64 hex characters: {_show(value, 80)}")
    return tx_hash


def _sum_values(items: Any, what: str, *, allow_coinbase: bool) -> tuple[int, bool]:
    """Σ value over inputs' prev_out (or outputs); returns (sum, is_coinbase)."""
    if not isinstance(items, list):
        raise InvalidInput(f"{what} is not a list")
    limit = MAX_INPUTS if allow_coinbase else MAX_OUTPUTS
    if len(items) > limit:
        raise InvalidInput(f"{what} has {len(items)} items, more than {limit:,} fit in {MAX_TX_SIZE:,} bytes")
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
        if not 0 <= value <= MAX_MONEY_SAT:
            raise InvalidInput(f"{what}[{i}] value {value} is outside 0..{MAX_MONEY_SAT:,} sat (21M BTC)")
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
        raise InvalidInput(
            f"time {time_s} is not a plausible epoch second (2009-01-03 {_MIN_TIME_S} .. 2100 {_MAX_TIME_S})"
        )
    size = _check_size(_int(tx.get("size"), "size"))
    fee_field = tx.get("fee")
    fee_given = None if fee_field is None else _check_fee(_int(fee_field, "fee"), "fee")
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
    return TxEvent(tx_hash, time_s * 1000, _check_fee(fee, "fee"), size, source, ingest_time)


def _check_fee(fee: int, what: str) -> int:
    if fee < 0:
        raise InvalidInput(f"{what} is negative: {fee}")
    if fee > MAX_MONEY_SAT:
        raise InvalidInput(f"{what} {fee} is above {MAX_MONEY_SAT:,} sat (21M BTC, all there will ever be)")
    return fee


def _check_size(size: int) -> int:
    if size <= 0:
        raise InvalidInput(f"size is not positive: {size}")
    if size > MAX_TX_SIZE:
        raise InvalidInput(f"size {size} is above {MAX_TX_SIZE:,} bytes (a block's weight limit)")
    return size


def _from_row(row: Mapping[str, Any], source: str, ingest_time: int, *, trusted: bool) -> TxEvent:
    """A TxEvent row (replay files, the stream's own records); `source` and `ingest_time` are
    the row's own only when `trusted` (a replay), never from a live sender."""
    tx_hash = _hash(row.get("tx_hash"))
    event_time = _int(row.get("event_time"), "event_time")
    if not _MIN_TIME_S * 1000 <= event_time <= _MAX_TIME_S * 1000:
        raise InvalidInput(
            f"event_time {event_time} is not a plausible epoch millisecond"
            f" (2009-01-03 {_MIN_TIME_S * 1000} .. 2100 {_MAX_TIME_S * 1000})"
        )
    fee = _check_fee(_int(row.get("fee_sat"), "fee_sat"), "fee_sat")
    size = _check_size(_int(row.get("size"), "size"))
    row_source = row.get("source")
    if trusted and isinstance(row_source, str) and _SOURCE_NAME(row_source):
        source = row_source
    if trusted and row.get("ingest_time") is not None:
        ingest_time = _int(row["ingest_time"], "ingest_time")
        if not 0 <= ingest_time <= _MAX_TIME_S * 1000:
            raise InvalidInput(f"ingest_time {ingest_time} is outside 0..{_MAX_TIME_S * 1000} (2100) ms")
    return TxEvent(tx_hash, event_time, fee, size, source, ingest_time)


def parse_message(
    raw: bytes | str | Mapping[str, Any] | Oversized,
    source: str,
    ingest_time: int,
    max_future_ms: int | None = None,
) -> TxEvent:
    """Turn any raw input into a TxEvent, or raise InvalidInput saying what is wrong.

    `max_future_ms` is given by live sources: it refuses a time more than that ahead of
    `ingest_time`, and the sender cannot set `source` or `ingest_time` (row-format frames).
    """
    event = _parse(raw, source, ingest_time, trusted=max_future_ms is None)
    if max_future_ms is not None and event.event_time > ingest_time + max_future_ms:
        raise InvalidInput(
            f"time is {(event.event_time - ingest_time) / 1000:.0f} s ahead of the ingest time"
            f" (ingest.max_future_s = {max_future_ms / 1000:g})"
        )
    return event


def _parse(
    raw: bytes | str | Mapping[str, Any] | Oversized, source: str, ingest_time: int, *, trusted: bool
) -> TxEvent:
    if isinstance(raw, Oversized):
        raise InvalidInput(f"frame of {raw.length:,} bytes is over the {MAX_FRAME_BYTES:,}-byte limit")
    obj: Any = raw
    if isinstance(raw, bytes | bytearray):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    if isinstance(raw, str):
        if len(raw) > MAX_FRAME_BYTES:
            raise InvalidInput(f"frame of {len(raw):,} characters is over the {MAX_FRAME_BYTES:,}-byte limit")
        try:
            obj = json.loads(raw)
        except RecursionError:
            raise InvalidInput("not JSON: nested too deep") from None
        except ValueError as exc:  # JSONDecodeError, and integers past CPython's 4,300-digit limit
            raise InvalidInput(f"not JSON: {_show(str(exc), 200)}") from None
    if not isinstance(obj, Mapping):
        raise InvalidInput(f"expected a JSON object, got {type(obj).__name__}")
    if "op" in obj:
        if obj["op"] != "utx":
            raise InvalidInput(f"not a transaction message: op={_show(str(obj['op']), 40)}")
        tx = obj.get("x")
        if not isinstance(tx, Mapping):
            raise InvalidInput("utx message without an 'x' object")
        return _from_blockchain_tx(tx, source, ingest_time)
    if "tx_hash" in obj:
        return _from_row(obj, source, ingest_time, trusted=trusted)
    if "hash" in obj:
        return _from_blockchain_tx(obj, source, ingest_time)
    raise InvalidInput("unknown message: no 'op', 'hash' or 'tx_hash' key")


def dead_letter(
    raw: bytes | str | Mapping[str, Any] | Oversized,
    reason: str,
    source: str,
    ingest_time: int,
    max_bytes: int = DEAD_LETTER_MAX_BYTES,
) -> DeadLetter:
    """A bounded dead letter: at most `max_bytes` of the raw text (valid UTF-8, undecodable bytes
    escaped), the raw input's full length in bytes and the SHA-256 of all of it.

    A str is hashed in chunks, so a huge frame is never copied whole once more."""
    if isinstance(raw, Oversized):
        return DeadLetter(_prefix(raw.head, max_bytes), reason, source, ingest_time, raw.length, raw.sha256)
    if isinstance(raw, bytes | bytearray):
        return DeadLetter(
            _prefix(raw[: max_bytes + 4], max_bytes),
            reason,
            source,
            ingest_time,
            len(raw),
            hashlib.sha256(raw).hexdigest(),
        )
    text = raw if isinstance(raw, str) else raw_text(raw)
    digest = hashlib.sha256()
    length = 0
    for at in range(0, len(text), 1 << 16):
        chunk = text[at : at + (1 << 16)].encode("utf-8", "surrogatepass")
        digest.update(chunk)
        length += len(chunk)
    head = text[:max_bytes].encode("utf-8", "backslashreplace")
    return DeadLetter(_prefix(head, max_bytes), reason, source, ingest_time, length, digest.hexdigest())


def _prefix(data: bytes | bytearray, max_bytes: int) -> str:
    """At most `max_bytes` bytes of UTF-8 text: undecodable bytes escaped, a cut character dropped."""
    text = bytes(data[:max_bytes]).decode("utf-8", errors="backslashreplace")
    encoded = text.encode("utf-8")
    return text if len(encoded) <= max_bytes else encoded[:max_bytes].decode("utf-8", errors="ignore")


def printable(text: str) -> str:
    """Refused text made safe for a terminal: control and other unprintable characters escaped
    (`\\x1b`, `\\n`, `\\u202e`), so an escape sequence in a frame never reaches the screen.
    Print the result as a rich `Text`, never as markup."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def raw_text(raw: bytes | str | Mapping[str, Any]) -> str:
    """The raw input as text, for the dead-letter store (undecodable bytes kept escaped)."""
    if isinstance(raw, bytes | bytearray):
        return bytes(raw).decode("utf-8", errors="backslashreplace")
    if isinstance(raw, str):
        return raw
    try:
        return json.dumps(raw, default=str)
    except (TypeError, ValueError, RecursionError):
        return f"<a {type(raw).__name__} that cannot be shown as JSON (nested too deep or unprintable)>"
