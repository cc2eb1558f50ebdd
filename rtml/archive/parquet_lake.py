"""The raw archive (Firehose -> S3 in the AWS original): every ingested TxEvent as Parquet, by event date and hour.

Layout: `<data_dir>/archive/date=YYYY-MM-DD/hour=HH/part-<offset>.parquet` (Hive style, so DuckDB,
Spark and pandas prune partitions). The archiver is a stream consumer with its own offset
(`archiver`): it reads after its committed offset, writes one file per touched hour named after
the batch's first offset, then commits. A crash before the commit makes the next run read the
same batch again from the same offset and overwrite the same files, so nothing is doubled.
A lost stream (a Redis that restarted empty) is archived again from the new one's start: what
the archive already holds stays, and is what the engine re-derives lost minutes from.
Small files are compacted into one per hour (write new, rename, delete old); a crash inside a
compaction can leave a row in two files, which is why `read_events` returns distinct rows.
"""

from __future__ import annotations

import os
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from rtml.config import Settings
from rtml.stream import COLUMNS, Stream, StreamReset, open_stream

if TYPE_CHECKING:
    import pandas as pd

CONSUMER = "archiver"
HOUR_MS = 3_600_000
# Events read from the stream per archiver batch.
BATCH = 200_000


def archive_root(settings: Settings) -> Path:
    return settings.root / "archive"


def _partition(root: Path, hour_ms: int) -> Path:
    when = datetime.fromtimestamp(hour_ms / 1000, tz=UTC)
    return root / f"date={when:%Y-%m-%d}" / f"hour={when:%H}"


def _write(table: object, target: Path) -> None:
    """Write atomically: a reader never sees half a file."""
    import pyarrow.parquet as pq

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    pq.write_table(table, tmp, compression="zstd")  # type: ignore[arg-type]
    os.replace(tmp, target)


def archive_pending(settings: Settings, stream: Stream | None = None, *, compact_at: int = 8) -> int:
    """Archive everything the stream holds past the archiver's offset; returns how many events.

    Hours that reach `compact_at` files are compacted on the way.
    """
    import pyarrow as pa

    own = stream is None
    log = open_stream(settings) if stream is None else stream
    root = archive_root(settings)
    written = 0
    touched: set[Path] = set()
    try:
        after = log.committed(CONSUMER)
        while True:
            try:
                batch = log.read(after, BATCH)
            except StreamReset:  # the stream was lost (Redis restarted empty): archive the new one
                after = None
                continue
            if not batch:
                break
            name = "part-" + re.sub(r"[^0-9A-Za-z]", "_", batch[0][0]) + ".parquet"
            by_hour: dict[int, list[int]] = {}
            for i, (_, event) in enumerate(batch):
                by_hour.setdefault(event.event_time // HOUR_MS, []).append(i)
            for hour, idx in by_hour.items():
                events = [batch[i][1] for i in idx]
                table = pa.table(
                    {col: [getattr(e, col) for e in events] for col in COLUMNS},
                    schema=_schema(),
                )
                target = _partition(root, hour * HOUR_MS) / name
                _write(table, target)
                touched.add(target.parent)
            after = batch[-1][0]
            log.commit(CONSUMER, after)
            written += len(batch)
        for folder in touched:
            if len(list(folder.glob("*.parquet"))) >= compact_at:
                _compact_folder(folder)
    finally:
        if own:
            log.close()
    return written


def _schema():  # type: ignore[no-untyped-def]
    import pyarrow as pa

    return pa.schema(
        [
            ("tx_hash", pa.string()),
            ("event_time", pa.int64()),
            ("fee_sat", pa.int64()),
            ("size", pa.int64()),
            ("source", pa.string()),
            ("ingest_time", pa.int64()),
        ]
    )


def _compact_folder(folder: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted(folder.glob("*.parquet"))
    if len(files) < 2:
        return
    table = pa.concat_tables([pq.read_table(f, schema=_schema()) for f in files])
    table = table.sort_by([("event_time", "ascending"), ("tx_hash", "ascending")])
    # Named after its first input, which it replaces atomically; the other inputs go afterwards.
    _write(table, files[0])
    for f in files[1:]:
        f.unlink()


def compact(settings: Settings, min_files: int = 2) -> int:
    """Merge every hour folder holding at least `min_files` files into one; returns folders compacted."""
    done = 0
    for folder in sorted(archive_root(settings).glob("date=*/hour=*")):
        if len(list(folder.glob("*.parquet"))) >= min_files:
            _compact_folder(folder)
            done += 1
    return done


def archive_files(settings: Settings) -> list[Path]:
    return sorted(archive_root(settings).glob("date=*/hour=*/*.parquet"))


def _hour_ms(folder: Path) -> int:
    """Start (epoch ms) of an hour partition `date=YYYY-MM-DD/hour=HH`."""
    hour = datetime.strptime(f"{folder.parent.name[5:]} {folder.name[5:]}", "%Y-%m-%d %H").replace(tzinfo=UTC)
    return int(hour.timestamp() * 1000)


def trim_archive(settings: Settings, before_ms: int) -> int:
    """Retention (`retention.archive_days` > 0 only): delete hour partitions that end by `before_ms`.

    Whole hours only, oldest first, then empty date folders; a crash leaves the rest for the next run.
    """
    import shutil

    gone = 0
    for folder in sorted(archive_root(settings).glob("date=*/hour=*")):
        if _hour_ms(folder) + HOUR_MS > before_ms:
            break
        shutil.rmtree(folder)
        gone += 1
    for day in archive_root(settings).glob("date=*"):
        if day.is_dir() and not any(day.iterdir()):
            day.rmdir()
    return gone


def archive_stats(settings: Settings) -> tuple[int, int, int | None]:
    """(bytes, events, start of the oldest hour in ms or None), from Parquet footers only."""
    import pyarrow.parquet as pq

    files = archive_files(settings)
    size = sum(f.stat().st_size for f in files)
    rows = sum(pq.read_metadata(f).num_rows for f in files)
    return size, rows, _hour_ms(files[0].parent) if files else None


def _ms(value: datetime | int | None) -> int | None:
    if value is None or isinstance(value, int):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1000)


def read_events(
    settings: Settings, start: datetime | int | None = None, end: datetime | int | None = None
) -> pd.DataFrame:
    """Archived events with `start <= event_time < end` (datetimes, or epoch ms), oldest first.

    Columns are the TxEvent fields (`event_time`, `ingest_time` in epoch ms). Partitions
    outside the range are not read.
    """
    import duckdb
    import pandas as pd

    start_ms, end_ms = _ms(start), _ms(end)
    files = archive_files(settings)
    if start_ms is not None or end_ms is not None:
        lo = None if start_ms is None else start_ms // HOUR_MS * HOUR_MS
        hi = end_ms

        def keep(path: Path) -> bool:
            hour_ms = _hour_ms(path.parent)
            return (lo is None or hour_ms >= lo) and (hi is None or hour_ms < hi)

        files = [f for f in files if keep(f)]
    if not files:
        return pd.DataFrame(
            {c: pd.Series(dtype="string" if c in ("tx_hash", "source") else "int64") for c in COLUMNS}
        )
    cols = ", ".join(COLUMNS)
    where = []
    params: list[object] = [[str(f) for f in files]]
    if start_ms is not None:
        where.append("event_time >= ?")
        params.append(start_ms)
    if end_ms is not None:
        where.append("event_time < ?")
        params.append(end_ms)
    sql = f"SELECT DISTINCT {cols} FROM read_parquet(?)"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY event_time, tx_hash"
    with duckdb.connect() as con:
        return con.execute(sql, params).df()
