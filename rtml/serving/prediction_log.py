"""The prediction log: every forecast the API gives, for the monitoring stage to score later.

A request only appends to an in-memory queue; one writer thread drains it in batches, so a
slow disk or a PostgreSQL round trip never sits on the request path. The same thread flushes
the serving counters. Where they land (SQLite, or PostgreSQL with a spool and Redis counters)
is the prediction store's (rtml.serving.prediction_store), whose names this module re-exports.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import defaultdict

from rtml.config import Settings
from rtml.serving.prediction_store import (
    JUDGED_KINDS,
    PIPELINE_KIND,
    PredictionRecord,
    PredictionStore,
    open_prediction_store,
)

__all__ = [
    "JUDGED_KINDS",
    "PIPELINE_KIND",
    "PredictionLog",
    "PredictionRecord",
    "PredictionStore",
    "count_predictions",
    "open_prediction_store",
    "read_judged",
    "read_predictions",
    "serving_counters",
]

log = logging.getLogger(__name__)


class PredictionLog:
    """Append forecasts and count events without blocking; a writer thread persists them in batches."""

    def __init__(self, settings: Settings, flush_interval_s: float = 0.2) -> None:
        self._store = open_prediction_store(settings)
        self._queue: queue.SimpleQueue[PredictionRecord | None] = queue.SimpleQueue()
        self._counts: defaultdict[str, float] = defaultdict(float)
        self._counts_lock = threading.Lock()
        self._flush_interval_s = flush_interval_s
        self._pending = 0
        self._idle = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def record(self, record: PredictionRecord) -> None:
        with self._idle:
            self._pending += 1
        self._queue.put(record)

    def count(self, name: str, value: float = 1.0) -> None:
        """Add to a persisted counter (`serving_counters` reads them back)."""
        with self._counts_lock:
            self._counts[name] += value

    def flush(self, timeout_s: float = 10.0) -> None:
        """Wait until every record given so far is written (tests, shutdown)."""
        deadline = time.monotonic() + timeout_s
        with self._idle:
            while self._pending and time.monotonic() < deadline:
                self._idle.wait(deadline - time.monotonic())
            if self._pending:
                raise TimeoutError(f"{self._pending} predictions still unwritten after {timeout_s} s")

    def read(self, since_ms: int = 0, limit: int = 100_000) -> list[PredictionRecord]:
        """Records logged at or after `since_ms`, oldest first (written ones only: call flush first)."""
        return self._store.read(since_ms, limit)

    def counters(self) -> dict[str, float]:
        return self._store.counters()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)
        self._store.close()

    def _run(self) -> None:
        stop = False
        while not stop:
            batch: list[PredictionRecord] = []
            try:
                item = self._queue.get(timeout=self._flush_interval_s)
                while True:
                    if item is None:
                        stop = True
                        break
                    batch.append(item)
                    item = self._queue.get_nowait()
            except queue.Empty:
                pass
            with self._counts_lock:
                counts, self._counts = self._counts, defaultdict(float)
            if batch or counts:
                try:
                    self._store.write(batch, counts)
                except Exception:  # the log must never take the API down; the loss is logged
                    # (PostgreSQL down is no loss: the store spools; this is anything else)
                    log.exception("prediction log: %d records and counters lost", len(batch))
            if batch:
                with self._idle:
                    self._pending -= len(batch)
                    self._idle.notify_all()


def read_predictions(settings: Settings, since_ms: int = 0, limit: int = 100_000) -> list[PredictionRecord]:
    """The logged forecasts (for monitoring), oldest first."""
    store = open_prediction_store(settings)
    try:
        return store.read(since_ms, limit)
    finally:
        store.close()


def read_judged(settings: Settings, start_ms: int, end_ms: int) -> list[PredictionRecord]:
    """The forecasts monitoring judges (the pipeline's own) with a target minute in [start_ms, end_ms).

    Services: never while forecasts wait in the spool (`Unsettled`, which the scheduler waits
    out): an hour judged without them would be judged on a part of its forecasts.
    """
    store = open_prediction_store(settings)
    try:
        store.settle()
        return store.read_targets(JUDGED_KINDS, start_ms, end_ms)
    finally:
        store.close()


def count_predictions(settings: Settings, kind: str = PIPELINE_KIND) -> int:
    store = open_prediction_store(settings)
    try:
        return store.count(kind)
    finally:
        store.close()


def serving_counters(settings: Settings) -> dict[str, float]:
    """Persisted serving counters: forecasts by kind, stale refusals, model swaps, errors."""
    store = open_prediction_store(settings)
    try:
        return store.counters()
    finally:
        store.close()
