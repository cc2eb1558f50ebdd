"""A lost stream, recovered by the engine rather than by a person.

A Redis without persistence that restarts comes back empty: the stream the engine's offset
belongs to is gone, and a new one (new name) fills up. The engine (`Engine._reset`) then:

1. says what was lost, as far as it can know (`loss`): its own committed offset and how many
   events it had consumed, the old stream's end as the appender recorded it (`stream.ledger`:
   last offset, entries taken), so how many events lay past the offset, and over which event
   times. Events behind the watermark would have been late anyway: the loss that matters starts
   at the watermark, and every window from there on is still open, holding what it had counted;
2. re-derives those minutes from what survived: its open windows, plus the raw archive's events
   in the affected event times (the archiver is a consumer of its own and may have read past the
   engine before the loss). The windows' tx_hash sets count an event the engine already had
   once; each minute emits again, with the next revision where it had been emitted before;
3. adopts the new stream from its start (a batch the appender had not finished is re-sent
   there, and counted once), in one transaction with the window state and a `stream_resets`
   row, which is then handed to the `on_reset` callback (the composition root records a
   `stream.reset` event): a crash in between re-delivers it, never loses it.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from rtml.aggregate.windows import NO_WATERMARK, WindowState
from rtml.config import Settings
from rtml.stream import Offset, Slim

log = logging.getLogger(__name__)


def _iso(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def loss(
    settings: Settings, old: str, new: str, offset: Offset | None, position: int | None, state: WindowState
) -> dict[str, Any]:
    """What the lost stream `old` held past the engine's `offset` (`position` events consumed)."""
    from rtml.stream.ledger import open_ledger

    end = None
    if (ledger := open_ledger(settings)) is not None:
        try:
            end = ledger.end(old, position)
        finally:
            ledger.close()
    watermark = state.watermark if state.watermark != NO_WATERMARK else None
    lo = end.min_event_time if end is not None else None
    hi = end.max_event_time if end is not None else None
    if lo is not None and watermark is not None:
        lo = max(lo, watermark)  # earlier ones would have been late: they change no minute
    return {
        "old_stream": old,
        "new_stream": new,
        "committed_offset": offset,
        "events_consumed": position,
        "old_stream_end": end.last_offset if end is not None else None,
        "old_stream_entries": end.entries_added if end is not None else None,
        "events_after_offset": end.events_after if end is not None else None,
        "watermark": _iso(watermark),
        "event_time_from": _iso(lo),
        "event_time_to": _iso(hi),
        "_from_ms": lo if lo is not None else watermark,
        "_to_ms": hi,
    }


def archived(settings: Settings, start_ms: int | None, end_ms: int | None) -> list[Slim]:
    """The archive's events with `start_ms <= event_time <= end_ms`, in event-time order."""
    from rtml.archive.parquet_lake import archive_files, read_events

    if not archive_files(settings):
        return []
    frame = read_events(settings, start_ms, None if end_ms is None else end_ms + 1)
    cols = (frame["tx_hash"].tolist(), frame["event_time"].tolist(), frame["fee_sat"].tolist())
    return list(zip(*cols, strict=True))


def rederive(settings: Settings, report: dict[str, Any], state: WindowState) -> list[int]:
    """Add the archive's events of the affected event times to the open windows (those already
    counted are duplicates there); returns the minutes that gained events. Fills the report."""
    start, end = report.pop("_from_ms"), report.pop("_to_ms")
    rows = archived(settings, start, end) if start is not None or end is not None else []
    before = state.events_in, state.duplicates, state.late
    counted_before = {m: w[0] for m, w in state.open.items()}
    state.add(rows)
    late = state.late - before[2]
    recovered = len(rows) - (state.duplicates - before[1]) - late
    gained = sorted(m for m, w in state.open.items() if w[0] > counted_before.get(m, 0))
    after = report["events_after_offset"]
    report |= {
        "archive_events_read": len(rows),
        "recovered_from_archive": recovered,
        "lost": None if after is None else max(0, after - recovered),
        "rederived_minutes": len(gained),
        "rederived_from": _iso(gained[0]) if gained else None,
        "rederived_to": _iso(gained[-1]) if gained else None,
    }
    return gained


def deliver_resets(conn: sqlite3.Connection, on_reset: Callable[[dict[str, Any]], None]) -> bool:
    """Hand the engine's undelivered `stream_resets` rows to `on_reset`, marking each once it is
    taken; False (the rest waits for the next try) when it fails."""
    rows = conn.execute("SELECT id, details FROM stream_resets WHERE delivered = 0 ORDER BY id").fetchall()
    for rid, details in rows:
        try:
            on_reset({"reset_id": rid, **json.loads(details)})
        except Exception as exc:  # noqa: BLE001 - it waits in the table
            log.warning("could not record stream reset %d (%s); will retry", rid, exc)
            return False
        conn.execute("UPDATE stream_resets SET delivered = 1 WHERE id = ?", (rid,))
    return True
