"""The plain-pandas reference of the window semantics, and replay shaping, for tests and benchmarks.

For a stream whose disorder stays within the allowed lateness (so nothing is late), the
engine's final output must equal this batch computation exactly: duplicates counted once,
every minute from the first to the last present, empty minutes with zeros and a null
average, `event_time` = minute end, revision 1.
"""

from __future__ import annotations

import gzip
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rtml.contracts import MINUTE_MS, MinuteFeatures, parse_message
from rtml.stream.base import Row


def reference_minutes(rows: Sequence[Sequence[Any]]) -> list[MinuteFeatures]:
    """Per-minute aggregates of (tx_hash, event_time, fee_sat, ...) rows with pandas."""
    import pandas as pd

    frame = pd.DataFrame({"h": [r[0] for r in rows], "t": [r[1] for r in rows], "f": [r[2] for r in rows]})
    frame = frame.drop_duplicates("h")
    frame["minute"] = frame["t"] - frame["t"] % MINUTE_MS
    grouped = frame.groupby("minute")["f"].agg(["count", "sum"])
    full = range(int(grouped.index.min()), int(grouped.index.max()) + MINUTE_MS, MINUTE_MS)
    grouped = grouped.reindex(full, fill_value=0)
    return [
        MinuteFeatures.from_window(int(m), int(c), int(s), 1)
        for m, c, s in zip(grouped.index, grouped["count"], grouped["sum"], strict=True)
    ]


def load_replay(path: Path) -> list[Row]:
    """A recorded blockchain.com `utx` file as stream rows, through the one validator."""
    rows: list[Row] = []
    with gzip.open(path, "rt") as lines:
        for i, line in enumerate(lines):
            e = parse_message(line, "replay", 1_700_000_000_000 + i)
            rows.append((e.tx_hash, e.event_time, e.fee_sat, e.size, e.source, e.ingest_time))
    return rows


def retime_dense(rows: Sequence[Row], shrink: float = 20.0, max_gap_ms: int = 180_000) -> list[Row]:
    """Events in time order with every gap divided by `shrink` and capped at `max_gap_ms`.

    The recording's quiet days become a few empty minutes and its busy hours several
    transactions a second, so a short replay covers dense minutes and empty ones alike.
    """
    ordered = sorted(rows, key=lambda r: r[1])
    out: list[Row] = []
    t = ordered[0][1]
    previous = t
    for r in ordered:
        t += min(int((r[1] - previous) / shrink), max_gap_ms)
        previous = r[1]
        out.append((r[0], t, *r[2:]))  # type: ignore[arg-type]
    return out


def disorder(
    rows: Sequence[Row], *, max_delay_ms: int, duplicate_share: float, seed: int
) -> tuple[list[Row], int]:
    """Delivery order with bounded disorder and re-sent duplicates; returns (rows, duplicates).

    Each event (and each duplicate) is delivered at its event time plus a random delay of at
    most `max_delay_ms`, so nothing arrives more than that behind the newest event delivered.
    """
    rnd = random.Random(seed)
    keyed: list[tuple[float, int, Row]] = []
    duplicates = 0
    for i, r in enumerate(rows):
        keyed.append((r[1] + rnd.uniform(0, max_delay_ms), i, r))
        if rnd.random() < duplicate_share:
            keyed.append((r[1] + rnd.uniform(0, max_delay_ms), i, r))
            duplicates += 1
    keyed.sort(key=lambda k: (k[0], k[1]))
    return [r for _, _, r in keyed], duplicates
