"""A Spark streaming data source over rtml's stream: the SQLite log or Redis Streams.

Spark keeps the offsets in its checkpoint and asks the source to re-read any range it has
planned but not committed, so the source only has to read `(start, end]` deterministically:
both logs are append-only and ordered by offset, which makes a replayed batch identical.
Offsets are `{"offset": "<backend offset>"}` (SQLite `events.offset` as text, Redis entry id).

Register with `spark.dataSource.register(RtmlStreamSource)` and read with
`spark.readStream.format("rtml_stream").options(**source_options(settings)).load()`.
Executors open their own connection in `read` (nothing unpicklable crosses to them).

Clock protection (option `guardPath`): the window semantics' `ClockGuard` must judge events
before Spark's own watermark sees them, in stream order, which only the driver can do. So the
driver reads each planned range's event times once more, runs the guard, and tells the
partitions which offsets to skip (held back or outliers) and which held rows to add (released
now). The guard's state after each range is kept in `guardPath` keyed by the range's end
offset, so a range Spark re-plans after a crash is judged again from the same state, with
the same result. Outliers wait in the same file until the job dead-letters them
(`take_outliers`): a crash in between records one twice, never loses one.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any

from pyspark.sql.datasource import DataSource, DataSourceStreamReader, InputPartition
from pyspark.sql.streaming.datasource import (
    ReadAllAvailable,
    ReadLimit,
    ReadMaxRows,
    SupportsTriggerAvailableNow,
)
from pyspark.sql.types import StructType

from rtml.aggregate.windows import NO_WATERMARK, ClockGuard
from rtml.config import Settings

SCHEMA = "tx_hash string, event_time long, fee_sat long, size long, source string, ingest_time long"
# Rows per Arrow record batch handed to Spark.
_CHUNK = 10_000
# A Redis id above every sequence number of one millisecond: "<ms>-<_SEQ_MAX>" closes a range.
_SEQ_MAX = 18446744073709551615


# Guard states kept per planned range end (Spark re-plans at most the last uncommitted batch).
_GUARD_SNAPSHOTS = 16


def source_options(
    settings: Settings,
    *,
    max_rows_per_batch: int = 100_000,
    partitions: int = 2,
    guard_path: str | None = None,
) -> dict[str, str]:
    """The options that point the source at this pipeline's stream (its `stream` backend)."""
    from rtml.stream import redis_stream_key, stream_path

    options = {"maxRowsPerBatch": str(max_rows_per_batch), "partitions": str(partitions)}
    if guard_path is not None:
        options |= {
            "guardPath": guard_path,
            "maxJumpMs": str(int(settings.window.max_jump_s * 1000)),
            "latenessMs": str(int(settings.window.allowed_lateness_s * 1000)),
        }
    if settings.backend("stream") == "redis":
        options |= {"backend": "redis", "url": settings.redis_url, "key": redis_stream_key(settings.namespace)}
    else:
        options |= {"backend": "sqlite", "path": stream_path(settings)}
    return options


class OffsetRange(InputPartition):
    """Events with `start < offset <= end` (backend offsets as text; `start` None = from the beginning),
    less the offsets in `skip`, plus the rows in `extra` (the clock guard's decisions)."""

    def __init__(
        self, start: str | None, end: str, skip: frozenset[str] = frozenset(), extra: Sequence[list[Any]] = ()
    ) -> None:
        self.start = start
        self.end = end
        self.skip = skip
        self.extra = list(extra)


class _Log:
    """The two logs behind one small interface: latest offset, range split, range read."""

    def __init__(self, options: dict[str, str]) -> None:
        self.backend = options.get("backend", "sqlite")
        if self.backend not in ("sqlite", "redis"):
            raise ValueError(f"unknown stream backend {self.backend!r}: expected sqlite or redis")
        self.options = options

    # -- SQLite: dense integer offsets -------------------------------------------------------
    def _sqlite(self) -> sqlite3.Connection:
        # Read-only URI: the source never creates or changes the writer's log.
        return sqlite3.connect(f"file:{self.options['path']}?mode=ro", uri=True, timeout=60)

    # -- Redis: entry ids "<ms>-<seq>" ----------------------------------------------------------
    def _redis(self) -> Any:
        import redis

        return redis.Redis.from_url(self.options["url"])

    def latest(self, after: str | None, max_rows: int | None) -> str | None:
        """The offset of the last event within `max_rows` after `after` (None: nothing new)."""
        if self.backend == "sqlite":
            if not os.path.exists(self.options["path"]):
                return None  # the log is created by its first writer
            conn = self._sqlite()
            try:
                if max_rows is None:
                    row = conn.execute("SELECT max(offset) FROM events WHERE offset > ?", (int(after or 0),))
                else:
                    row = conn.execute(
                        "SELECT max(offset) FROM (SELECT offset FROM events WHERE offset > ? ORDER BY offset LIMIT ?)",
                        (int(after or 0), max_rows),
                    )
                value = row.fetchone()[0]
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    return None
                raise
            finally:
                conn.close()
            return None if value is None else str(value)
        client = self._redis()
        try:
            if max_rows is None:
                entries = client.xrevrange(self.options["key"], max="+", min="-", count=1)
                if entries and after is not None and _id(entries[0][0].decode()) <= _id(after):
                    return None
            else:
                # Redis cannot skip n entries by id alone: this reads up to max_rows entries
                # on the driver (cheap next to the batch the executors then read).
                low = f"({after}" if after is not None else "-"
                entries = client.xrange(self.options["key"], min=low, max="+", count=max_rows)[-1:]
            return entries[-1][0].decode() if entries else None
        finally:
            client.close()

    def split(self, start: str | None, end: str, parts: int) -> list[OffsetRange]:
        """Cut `(start, end]` into up to `parts` consecutive ranges (read in parallel)."""
        if self.backend == "sqlite":
            low, high = int(start or 0), int(end)
            step = max(1, -(-(high - low) // parts))
            return [OffsetRange(str(a), str(min(a + step, high))) for a in range(low, high, step)]
        low_ms = _id(start)[0] if start is not None else _id(self._first_id() or end)[0] - 1
        high_ms = _id(end)[0]
        step = max(1, -(-(high_ms - low_ms) // parts))
        cuts = [f"{ms}-{_SEQ_MAX}" for ms in range(low_ms + step, high_ms, step)]
        bounds: list[str | None] = [start, *cuts, end]
        return [OffsetRange(a, b) for a, b in zip(bounds, bounds[1:], strict=False) if b is not None]

    def _first_id(self) -> str | None:
        client = self._redis()
        try:
            entries = client.xrange(self.options["key"], min="-", max="+", count=1)
            return entries[0][0].decode() if entries else None
        finally:
            client.close()

    def read(self, part: OffsetRange) -> Iterator[list[list[Any]]]:
        """The events of one range in log order, in chunks of rows (TxEvent field order)."""
        if not part.skip:
            for chunk in self._read(part.start, part.end, with_offsets=False):
                yield [row for _, row in chunk]
        else:
            for chunk in self._read(part.start, part.end, with_offsets=True):
                yield [row for offset, row in chunk if offset not in part.skip]
        if part.extra:
            yield part.extra

    def rows(self, start: str | None, end: str) -> Iterator[tuple[str, list[Any]]]:
        """(offset, row) of `(start, end]` in log order, for the driver's clock guard."""
        for chunk in self._read(start, end, with_offsets=True):
            yield from chunk

    def _read(
        self, start: str | None, end: str, *, with_offsets: bool
    ) -> Iterator[list[tuple[str, list[Any]]]]:
        if self.backend == "sqlite":
            conn = self._sqlite()
            try:
                cur = conn.execute(
                    "SELECT offset, tx_hash, event_time, fee_sat, size, source, ingest_time FROM events"
                    " WHERE offset > ? AND offset <= ? ORDER BY offset",
                    (int(start or 0), int(end)),
                )
                while rows := cur.fetchmany(_CHUNK):
                    yield [(str(r[0]) if with_offsets else "", list(r[1:])) for r in rows]
            finally:
                conn.close()
            return
        client = self._redis()
        try:
            low = f"({start}" if start is not None else "-"
            while True:
                entries = client.xrange(self.options["key"], min=low, max=end, count=_CHUNK)
                if not entries:
                    return
                rows = json.loads(b"[" + b",".join(fields[b"j"] for _, fields in entries) + b"]")
                yield [(entry_id.decode(), row) for (entry_id, _), row in zip(entries, rows, strict=True)]
                low = f"({entries[-1][0].decode()}"
        finally:
            client.close()


def load_guard(path: str) -> dict[str, Any]:
    """The clock guard's file: states by range end (insertion order) and outliers by range end."""
    if not os.path.exists(path):
        return {"states": {}, "outliers": {}}
    with open(path) as f:
        return json.load(f)  # type: ignore[no-any-return]


def save_guard(path: str, doc: dict[str, Any]) -> None:
    """Atomically (a kill -9 leaves the old file or the new one)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def take_outliers(path: str) -> list[tuple[str, int, int, str]]:
    """Outliers judged so far (tx_hash, event_time, fee_sat, reason), removed from the file."""
    doc = load_guard(path)
    found = [tuple(o) for batch in doc["outliers"].values() for o in batch]
    if found:
        doc["outliers"] = {}
        save_guard(path, doc)
    return found  # type: ignore[return-value]


def _id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class RtmlStreamReader(DataSourceStreamReader, SupportsTriggerAvailableNow):
    """Micro-batches of at most `maxRowsPerBatch` events; AvailableNow stops at the log's end."""

    def __init__(self, options: dict[str, str]) -> None:
        self.log = _Log(options)
        self.max_rows = int(options.get("maxrowsperbatch", "100000"))
        self.parts = int(options.get("partitions", "2"))
        self.target: str | None = None
        self.available_now = False
        self.guard_path = options.get("guardpath")
        self.max_jump_ms = int(options.get("maxjumpms", "3600000"))
        self.lateness_ms = int(options.get("latenessms", "60000"))

    def initialOffset(self) -> dict[str, Any]:
        return {"offset": None}

    def getDefaultReadLimit(self) -> ReadLimit:
        return ReadMaxRows(self.max_rows)

    def prepareForTriggerAvailableNow(self) -> None:
        self.available_now = True
        self.target = self.log.latest(None, None)

    def latestOffset(self, start: dict[str, Any], limit: ReadLimit) -> dict[str, Any]:
        after = start["offset"]
        if self.available_now:
            if self.target is None or (after is not None and self._le(self.target, after)):
                return start
        max_rows = None if isinstance(limit, ReadAllAvailable) else getattr(limit, "max_rows", None)
        latest = self.log.latest(after, max_rows)
        if latest is None:
            return start
        if self.available_now and self.target is not None and self._le(self.target, latest):
            latest = self.target
        return {"offset": latest}

    def _le(self, a: str, b: str) -> bool:
        if self.log.backend == "sqlite":
            return int(a) <= int(b)
        return _id(a) <= _id(b)

    def partitions(self, start: dict[str, Any], end: dict[str, Any]) -> Sequence[InputPartition]:
        if end["offset"] is None or start == end:
            return []
        parts = self.log.split(start["offset"], end["offset"], self.parts)
        if self.guard_path is None:
            return parts
        skip, extra = self._guard(start["offset"], end["offset"])
        return [OffsetRange(p.start, p.end, skip, extra if i == 0 else ()) for i, p in enumerate(parts)]

    def _guard(self, start: str | None, end: str) -> tuple[frozenset[str], list[list[Any]]]:
        """Judge `(start, end]` from the guard state after `start`; keep the state after `end`."""
        assert self.guard_path is not None
        doc = load_guard(self.guard_path)
        top, held = doc["states"].get(start or "", [NO_WATERMARK, []])
        guard = ClockGuard(
            self.max_jump_ms, self.lateness_ms, [tuple(r) for r, _ in held], [n for _, n in held]
        )
        skip: set[str] = set()
        extra: list[list[Any]] = []
        for offset, row in self.log.rows(start, end):
            et = row[1]
            wm = top - self.lateness_ms if top != NO_WATERMARK else NO_WATERMARK
            if not guard.needs(et, wm):
                top = max(top, et)
                continue
            passed = False
            for r in guard.judge((*row, offset), wm):
                top = max(top, r[1])
                if r[-1] == offset:
                    passed = True
                else:
                    extra.append(list(r[:-1]))  # held earlier, released now
            if not passed:
                skip.add(offset)  # held back (or an outlier): not in this range's data
        doc["states"][end] = [top, [[list(r), n] for r, n in zip(guard.held, guard.seen, strict=True)]]
        while len(doc["states"]) > _GUARD_SNAPSHOTS:
            doc["states"].pop(next(iter(doc["states"])))
        doc["outliers"][end] = [[e.tx_hash, e.event_time, e.fee_sat, e.reason] for e in guard.outliers]
        save_guard(self.guard_path, doc)
        return frozenset(skip), extra

    def read(self, partition: InputPartition) -> Iterator[Any]:
        import pyarrow as pa

        assert isinstance(partition, OffsetRange)
        names = ["tx_hash", "event_time", "fee_sat", "size", "source", "ingest_time"]
        types = [pa.string(), pa.int64(), pa.int64(), pa.int64(), pa.string(), pa.int64()]
        for rows in self.log.read(partition):
            columns = list(zip(*rows, strict=True))
            yield pa.RecordBatch.from_arrays(
                [pa.array(col, type=t) for col, t in zip(columns, types, strict=True)], names=names
            )


class RtmlStreamSource(DataSource):
    """`format("rtml_stream")`: the pipeline's stream as an unbounded table of TxEvents."""

    @classmethod
    def name(cls) -> str:
        return "rtml_stream"

    def schema(self) -> StructType | str:
        return SCHEMA

    def streamReader(self, schema: StructType) -> DataSourceStreamReader:
        # Spark hands options over with lower-cased keys (they are case-insensitive).
        return RtmlStreamReader({k.lower(): v for k, v in self.options.items()})
