"""The Spark data source's offset logic on both stream backends, without starting a JVM.

Spark re-reads any planned range after a crash, so what matters is that ranges are exact:
`latest` respects the row limit, `split` cuts `(start, end]` into consecutive ranges, and
reading them back gives every event once, in log order, whatever the cut.
"""

from __future__ import annotations

import importlib.util

import pytest
from conftest import require

from rtml.config import Settings
from rtml.stream import Row, open_stream

pytestmark = pytest.mark.spark


@pytest.fixture(autouse=True)
def _pyspark() -> None:
    require(importlib.util.find_spec("pyspark") is not None, "pyspark is not installed (the spark extra)")


def rows(n: int) -> list[Row]:
    return [(f"{i:064x}", 1_700_000_000_000 + i * 700, i * 3, 200 + i, "test", 0) for i in range(n)]


def read_all(log: object, parts: list[object]) -> list[str]:
    return [r[0] for part in parts for chunk in log.read(part) for r in chunk]  # type: ignore[attr-defined]


def test_offsets_ranges_and_reads_are_exact(backend_settings: Settings) -> None:
    from rtml.aggregate.spark_source import RtmlStreamReader, source_options

    reader = RtmlStreamReader({k.lower(): v for k, v in source_options(backend_settings).items()})
    log = reader.log
    assert log.latest(None, None) is None  # no log yet: nothing to read, no error
    with open_stream(backend_settings) as stream:
        for start in range(0, 2_500, 500):  # several appends: Redis ids span several milliseconds
            stream.append_rows(rows(2_500)[start : start + 500])
    expected = [r[0] for r in rows(2_500)]

    first = log.latest(None, 1_000)
    last = log.latest(None, None)
    assert first is not None and last is not None
    assert log.latest(last, None) is None  # nothing after the end
    for parts in (1, 2, 3, 7):
        assert read_all(log, log.split(None, first, parts)) == expected[:1_000]
        assert read_all(log, log.split(first, last, parts)) == expected[1_000:]
    # The reader's offsets: a row limit per batch, and AvailableNow stops at the end it saw first.
    from pyspark.sql.streaming.datasource import ReadMaxRows

    start = reader.initialOffset()
    assert reader.latestOffset(start, ReadMaxRows(1_000)) == {"offset": first}
    reader.prepareForTriggerAvailableNow()
    with open_stream(backend_settings) as stream:
        stream.append_rows(rows(2_600)[2_500:])  # arrives after the AvailableNow start
    end = reader.latestOffset({"offset": first}, ReadMaxRows(10_000))
    assert end == {"offset": last}
    assert reader.latestOffset(end, ReadMaxRows(10_000)) == end
    assert reader.partitions(end, end) == []
