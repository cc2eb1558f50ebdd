"""The records every stage and backend exchanges, and the bounds of valid input.

`TxEvent` and `MinuteFeatures` are slotted dataclasses rather than pydantic models because
ingestion handles hundreds of thousands of them a second; `Forecast` crosses the HTTP API,
so it is a pydantic model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

MINUTE_MS = 60_000
# Bounds from Bitcoin's own rules; anything beyond them is a dead letter naming the field and bound.
# No amount exceeds the 21,000,000 BTC that will ever exist (MAX_MONEY, in satoshi).
MAX_MONEY_SAT = 2_100_000_000_000_000
# A block holds at most 4,000,000 weight units, so no transaction is larger than 4,000,000 bytes.
MAX_TX_SIZE = 4_000_000
# The smallest input is 41 bytes and the smallest output 9: no more of them fit in MAX_TX_SIZE.
MAX_INPUTS = MAX_TX_SIZE // 41
MAX_OUTPUTS = MAX_TX_SIZE // 9
# Times: not before the genesis block's day (2009-01-03); after 2100 it is a unit error (ms for s).
# How far ahead of *now* a time may be is the live sources' rule (`ingest.max_future_s`), and how
# far ahead of the stream the window semantics' (`window.max_jump_s`).
_MIN_TIME_S = 1_230_940_800
_MAX_TIME_S = 4_102_444_800
# How many events in a row far off the stream's clock show that it really jumped (a replay's gap)
# rather than that one frame lies: the window semantics and replay pacing both use it.
CLOCK_CONFIRM_EVENTS = 10
# The longest frame or replay line read whole: 4 MiB is 5,000 times the longest frame in the
# 2020 recording (799 bytes). Longer ones are refused unread (`Oversized`).
MAX_FRAME_BYTES = 4 * 1024 * 1024
# Raw text kept per dead letter (`ingest.dead_letter_max_bytes` overrides it).
DEAD_LETTER_MAX_BYTES = 64 * 1024
# (tx_hash, event_time, fee_sat, size, source, ingest_time): a TxEvent as a plain tuple, in its
# field order; the stream stores and moves these.
Row = tuple[str, int, int, int, str, int]


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
    """Input that was refused, with the reason: a bounded prefix of its raw text, its full length
    in bytes and the SHA-256 of all of it (so a huge frame is identified without being kept)."""

    raw: str
    reason: str
    source: str
    ingest_time: int
    raw_bytes: int = -1
    raw_sha256: str = ""
    # Ingestion's event clock when it was refused (rtml.sources.clock): what retention ages it
    # by. -1 until the dead-letter store stamps it.
    clock: int = -1


@dataclass(frozen=True, slots=True)
class Oversized:
    """A frame or line longer than MAX_FRAME_BYTES, read in chunks and never held whole."""

    head: bytes
    length: int
    sha256: str


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
