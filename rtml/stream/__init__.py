"""The stream (Kinesis Data Streams in the AWS original): `open_stream(settings)` picks the backend."""

from __future__ import annotations

from rtml.config import Settings
from rtml.stream.base import COLUMNS, AppendMark, Offset, Row, Slim, Stream, StreamReset, redis_stream_key

__all__ = [
    "COLUMNS", "AppendMark", "Offset", "Row", "Slim", "Stream", "StreamReset", "open_stream", "redis_stream_key",
    "stream_path",
]


def stream_path(settings: Settings) -> str:
    """Where the embedded log lives (the Spark data source reads it too)."""
    return str(settings.path("stream.sqlite"))


def open_stream(settings: Settings) -> Stream:
    """The profile's `stream` backend: a SQLite log, or Redis Streams."""
    if settings.backend("stream") == "redis":
        from rtml.stream.redis_streams import RedisStream

        return RedisStream(settings.redis_url, settings.namespace)
    from pathlib import Path

    from rtml.stream.sqlite_log import SqliteStream

    return SqliteStream(Path(stream_path(settings)))
