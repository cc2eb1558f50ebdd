"""The data contracts every stage and backend honours, and the one validator of raw input.

`records`: the records stages exchange (`TxEvent`, `MinuteFeatures`, `Forecast`, ...) and the
bounds of valid input; `validate`: `parse_message`, the only place raw input is judged, and
the dead letters of what it refuses; `batch`: its fast path for ingestion's batches. Every
name is importable from `rtml.contracts`; the three modules are shared like it (they import
no part).
"""

from rtml.contracts.batch import parse_batch
from rtml.contracts.records import (
    CLOCK_CONFIRM_EVENTS,
    DEAD_LETTER_MAX_BYTES,
    MAX_FRAME_BYTES,
    MAX_INPUTS,
    MAX_MONEY_SAT,
    MAX_OUTPUTS,
    MAX_TX_SIZE,
    MINUTE_MS,
    DeadLetter,
    Forecast,
    MinuteFeatures,
    Oversized,
    Row,
    TxEvent,
    datetime_to_ms,
    ms_to_datetime,
)
from rtml.contracts.validate import InvalidInput, dead_letter, parse_message, printable, raw_text

__all__ = [
    "CLOCK_CONFIRM_EVENTS",
    "DEAD_LETTER_MAX_BYTES",
    "MAX_FRAME_BYTES",
    "MAX_INPUTS",
    "MAX_MONEY_SAT",
    "MAX_OUTPUTS",
    "MAX_TX_SIZE",
    "MINUTE_MS",
    "DeadLetter",
    "Forecast",
    "InvalidInput",
    "MinuteFeatures",
    "Oversized",
    "Row",
    "TxEvent",
    "datetime_to_ms",
    "dead_letter",
    "ms_to_datetime",
    "parse_batch",
    "parse_message",
    "printable",
    "raw_text",
]
