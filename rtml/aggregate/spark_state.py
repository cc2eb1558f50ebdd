"""The Spark engine's driver state: where it lives beside the checkpoint, and `DriverState`,
the window semantics fed with Spark's window totals and persisted as one JSON file.

The file records the last applied micro-batch id and the rows still to deliver (outbox); it is
replaced atomically (write, fsync, rename), so a kill -9 leaves the old file or the new one:
a replayed batch is skipped, and an outbox a crash left behind is delivered on restart.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rtml.aggregate.sinks import MinuteSink
from rtml.aggregate.windows import MAX_TOTAL_SAT, NO_WATERMARK, Window, WindowState
from rtml.config import Settings
from rtml.contracts import MINUTE_MS, MinuteFeatures

STATE_FILE = "rtml-window-state.json"


def checkpoint_dir(settings: Settings, checkpoint: str | None = None) -> str:
    """The Spark checkpoint: the given path or URI, else `<data_dir>/spark/checkpoint`."""
    return checkpoint if checkpoint else str(settings.path("spark", "checkpoint"))


def state_path(settings: Settings, checkpoint: str) -> Path:
    """The driver's window state: inside a local checkpoint, else under the data directory.

    It lives on the driver's file system, so with a remote checkpoint (hdfs://, s3a://) run the
    driver where its data directory persists (client deploy mode, as the submit script does).
    """
    if "://" in checkpoint and not checkpoint.startswith("file://"):
        import hashlib

        tag = hashlib.sha1(checkpoint.encode()).hexdigest()[:10]
        return settings.path("spark", f"window-state-{tag}.json")
    path = Path(checkpoint.removeprefix("file://")) / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


class DriverState:
    """`WindowState` fed with Spark's window totals instead of events, persisted as JSON."""

    def __init__(self, path: Path, lateness_ms: int) -> None:
        self.path = path
        self.windows = WindowState(lateness_ms=lateness_ms)
        self.last_batch = -1
        self.outbox: list[tuple[int, int, int, int]] = []
        self.ignored_updates = 0
        if path.exists():
            self._load(json.loads(path.read_text()))

    def _load(self, doc: dict[str, Any]) -> None:
        if doc["lateness_ms"] != self.windows.lateness_ms:
            raise RuntimeError(
                f"{self.path} was built with allowed lateness {doc['lateness_ms']} ms, not "
                f"{self.windows.lateness_ms} ms: use another checkpoint to change it"
            )
        w = self.windows
        w.watermark, w.max_event_time = doc["watermark"], doc["max_event_time"]
        w.next_emit, w.max_minute = doc["next_emit"], doc["max_minute"]
        w.open = {int(m): [c, t, set()] for m, (c, t) in doc["open"].items()}
        w.provisional = {int(m): (r, c, t) for m, (r, c, t) in doc["provisional"].items()}
        w.windows_emitted = doc["windows_emitted"]
        self.last_batch = doc["last_batch"]
        self.outbox = [tuple(row) for row in doc["outbox"]]  # type: ignore[misc]
        self.ignored_updates = doc.get("ignored_updates", 0)

    def save(self) -> None:
        """Write atomically: a kill -9 leaves the old file or the new one, never half of one."""
        w = self.windows
        doc = {
            "lateness_ms": w.lateness_ms,
            "last_batch": self.last_batch,
            "watermark": w.watermark,
            "max_event_time": w.max_event_time,
            "next_emit": w.next_emit,
            "max_minute": w.max_minute,
            "open": {str(m): [v[0], v[1]] for m, v in w.open.items()},
            "provisional": {str(m): list(p) for m, p in w.provisional.items()},
            "windows_emitted": w.windows_emitted,
            "ignored_updates": self.ignored_updates,
            "outbox": [list(row) for row in self.outbox],
            "updated_at": time.time(),
        }
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(doc, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        w.dirty.clear()  # the whole state is saved each time: no change left to track

    def apply(self, batch_id: int, totals: Sequence[tuple[int, int, int, int]]) -> bool:
        """Merge one batch of (minute, tx_count, fee_total_sat, max_event_time); False if already applied.

        Spark filtered this batch with the watermark of the batches before it, so windows are
        judged against the watermark at batch start, whatever order the rows come in. Spark
        only updates windows that watermark has not passed, except after an idle advance ran
        the driver's watermark ahead of Spark's: such a window is already final and keeps its
        value (its new events count as late, as in the embedded engine).
        """
        if batch_id <= self.last_batch:
            return False
        w = self.windows
        watermark_before = w.watermark
        for minute, count, total, max_et in totals:
            if minute + MINUTE_MS <= watermark_before or total > MAX_TOTAL_SAT:
                # A total past int64 (more than 4,392 fees of 21M BTC in one minute) keeps the
                # window's last value: the embedded engine refuses the event that would pass it,
                # which Spark's totals cannot single out. Counted, so it is never silent.
                self.ignored_updates += 1
                continue
            w.open[minute] = [count, total, set()]
            if w.next_emit is None or minute < w.next_emit:
                w.next_emit = minute
            if w.max_minute is None or minute > w.max_minute:
                w.max_minute = minute
            if max_et > w.max_event_time:
                w.max_event_time = max_et
                w.watermark = max(w.watermark, max_et - w.lateness_ms)
        self.last_batch = batch_id
        self._stage(w.pop_final())
        return True

    def advance(self, watermark: int) -> None:
        """Idle advance of a live run (the embedded engine's rule), emitting what it closes."""
        self.windows.advance(watermark)
        self._stage(self.windows.pop_final())

    def drain(self) -> None:
        """Close every window up to the last seen minute, as the embedded engine's drain does."""
        self._stage(self.windows.drain())

    def _stage(self, windows: list[Window]) -> None:
        self.outbox.extend((x.minute, x.tx_count, x.fee_total_sat, x.revision) for x in windows)

    def deliver(self, sinks: Sequence[MinuteSink]) -> int:
        """Hand the outbox to every sink (idempotent), then clear it; safe to repeat."""
        if not self.outbox:
            return 0
        latest = {m: MinuteFeatures.from_window(m, c, t, r) for m, c, t, r in self.outbox}
        rows = [latest[m] for m in sorted(latest)]
        for sink in sinks:
            sink.upsert(rows)
        self.outbox = []
        self.save()
        return len(rows)

    def counters(self) -> dict[str, float]:
        w = self.windows
        wm = w.watermark if w.watermark != NO_WATERMARK else None
        return {
            "batches": float(self.last_batch + 1),
            "windows_emitted": float(w.windows_emitted),
            "open_windows": float(len(w.open)),
            "ignored_updates": float(self.ignored_updates),
            "watermark": wm / 1000 if wm is not None else 0.0,
            "watermark_lag_s": time.time() - wm / 1000 if wm is not None else 0.0,
        }


def spark_counters(settings: Settings, checkpoint: str | None = None) -> dict[str, float]:
    """The Spark engine's counters (batches, windows emitted, open windows, watermark, its lag)."""
    path = state_path(settings, checkpoint_dir(settings, checkpoint))
    return DriverState(path, int(settings.window.allowed_lateness_s * 1000)).counters()


def guard_path(settings: Settings, checkpoint: str) -> str:
    """The source's clock-guard file, beside the driver's window state."""
    return str(state_path(settings, checkpoint).with_name("rtml-clock-guard.json"))
