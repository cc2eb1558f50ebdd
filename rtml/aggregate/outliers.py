"""Clock outliers into ingestion's dead-letter store, for both aggregation engines."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

from rtml.aggregate.windows import NO_WATERMARK
from rtml.config import Settings
from rtml.contracts import DeadLetter


def record_outliers(settings: Settings, outliers: Sequence[Sequence[object]], watermark: int) -> None:
    """Clock outliers (tx_hash, event_time, fee_sat, reason) into ingestion's dead-letter store,
    as source `aggregate` with the row as JSON, stamped with the engine's watermark (an outlier's
    own time is the one thing not to trust; before any watermark, the ingest time stands in):
    both engines call this."""
    from rtml.sources.deadletters import open_ingest_store

    now = int(time.time() * 1000)
    letters = []
    for tx_hash, et, fee, reason in outliers:
        raw = json.dumps({"tx_hash": tx_hash, "event_time": et, "fee_sat": fee})
        letters.append(DeadLetter(raw, str(reason), "aggregate", now, len(raw), ""))
    with open_ingest_store(settings) as store:
        store.record(letters, {"clock_outliers": len(letters)}, None if watermark == NO_WATERMARK else watermark)
