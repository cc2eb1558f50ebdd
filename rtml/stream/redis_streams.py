"""The services stream: a Redis Stream `{namespace}:stream:tx`, entry ids as offsets.

Each entry has one field `j`, a compact JSON array in TxEvent field order
`[tx_hash, event_time, fee_sat, size, source, ingest_time]`: one field keeps entries small
and lets a reader decode a whole batch with a single `json.loads` (the Spark data source
reads exactly this format). Consumer offsets live in the hash `{namespace}:offsets`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from typing import Any

import redis

from rtml.contracts import TxEvent
from rtml.stream.base import Offset, Row, Slim, Stream

# Entries per script call.
_CHUNK = 5000


# One round trip, atomic (a script runs whole or not at all), in order; returns the last id.
_XADD_ALL = (
    "local last for i = 1, #ARGV do last = redis.call('XADD', KEYS[1], '*', 'j', ARGV[i]) end return last"
)


class RedisStream(Stream):
    def __init__(self, url: str, namespace: str) -> None:
        self._r = redis.Redis.from_url(url)
        # Raw XRANGE replies ([id, [b"j", value]] lists): redis-py's per-entry dicts cost more
        # than everything else the engine does with an event.
        self._r.set_response_callback("XRANGE", lambda response, **_: response)
        self._xadd_all = self._r.register_script(_XADD_ALL)
        self.key = f"{namespace}:stream:tx"
        self.offsets_key = f"{namespace}:offsets"
        id_key = f"{namespace}:stream:identity"
        self._r.set(id_key, f"redis:{self.key}:{uuid.uuid4().hex}", nx=True)
        self.identity = self._r.get(id_key).decode()  # type: ignore[union-attr]

    def append_rows(self, rows: Sequence[Row]) -> Offset | None:
        last: Offset | None = None
        dumps = json.JSONEncoder(separators=(",", ":")).encode
        for start in range(0, len(rows), _CHUNK):
            ids = self._xadd_all(keys=[self.key], args=[dumps(row) for row in rows[start : start + _CHUNK]])
            last = ids.decode()
        return last

    def _range(self, after: Offset | None, limit: int) -> list[Any]:
        low = f"({after}" if after is not None else "-"
        return self._r.xrange(self.key, min=low, max="+", count=limit)  # type: ignore[return-value]

    @staticmethod
    def _decode(entries: list[Any]) -> list[list[Any]]:
        """All entries' JSON arrays with one `json.loads` (much faster than one per entry)."""
        return json.loads(b"[" + b",".join(fields[1] for _, fields in entries) + b"]")  # type: ignore[no-any-return]

    def read(self, after: Offset | None, limit: int) -> list[tuple[Offset, TxEvent]]:
        entries = self._range(after, limit)
        values = self._decode(entries)
        return [(eid.decode(), TxEvent(*v)) for (eid, _), v in zip(entries, values, strict=True)]

    def read_slim(self, after: Offset | None, limit: int) -> tuple[list[Slim], Offset | None]:
        entries = self._range(after, limit)
        if not entries:
            return [], after
        return [(v[0], v[1], v[2]) for v in self._decode(entries)], entries[-1][0].decode()

    def committed(self, consumer: str) -> Offset | None:
        value = self._r.hget(self.offsets_key, consumer)
        return None if value is None else value.decode()  # type: ignore[union-attr]

    def commit(self, consumer: str, offset: Offset) -> None:
        self._r.hset(self.offsets_key, consumer, offset)

    def count_after(self, after: Offset | None) -> int:
        if after is None:
            return int(self._r.xlen(self.key))  # type: ignore[arg-type]
        # Streams cannot count a range server-side; lag is read rarely (counters), so page through it.
        total = 0
        cursor = after
        while True:
            entries = self._r.xrange(self.key, min=f"({cursor}", max="+", count=10_000)
            if not entries:
                return total
            total += len(entries)  # type: ignore[arg-type]
            cursor = entries[-1][0].decode()  # type: ignore[index]

    def trim(self, *, max_age_s: float | None = None, max_len: int | None = None) -> int:
        dropped = 0
        if max_age_s is not None:
            # Auto-generated ids start with the append time in ms: trim by id.
            min_id = f"{int(time.time() * 1000 - max_age_s * 1000)}-0"
            dropped += int(self._r.xtrim(self.key, minid=min_id, approximate=False))  # type: ignore[arg-type]
        if max_len is not None:
            dropped += int(self._r.xtrim(self.key, maxlen=max_len, approximate=False))  # type: ignore[arg-type]
        return dropped

    def trim_consumed(self, before_event_ms: int, consumers: Sequence[str]) -> int:
        committed = [self.committed(c) for c in consumers]
        if not consumers or any(c is None for c in committed):
            return 0
        low = min(_id(c) for c in committed if c is not None)
        # Walk the head of the stream to the first event to keep (or past the lowest commit).
        cursor, keep = "-", None
        while keep is None:
            entries = self._r.xrange(self.key, min=cursor, max="+", count=1000)
            if not entries:
                break
            for (eid, _), value in zip(entries, self._decode(entries), strict=True):  # type: ignore[arg-type]
                if _id(eid.decode()) > low or value[1] >= before_event_ms:
                    keep = eid.decode()
                    break
            cursor = f"({entries[-1][0].decode()}"  # type: ignore[index]
        if keep is None:  # everything is consumed and old: keep nothing
            keep = f"{low[0]}-{low[1] + 1}"
        return int(self._r.xtrim(self.key, minid=keep, approximate=False))  # type: ignore[arg-type]

    def stats(self) -> tuple[int, int, int | None]:
        rows = int(self._r.xlen(self.key))  # type: ignore[arg-type]
        size = int(self._r.memory_usage(self.key) or 0) if rows else 0  # type: ignore[arg-type]
        first = self._r.xrange(self.key, min="-", max="+", count=1)
        return size, rows, int(self._decode(first)[0][1]) if first else None  # type: ignore[arg-type]

    def close(self) -> None:
        self._r.close()


def _id(offset: str) -> tuple[int, int]:
    """A stream entry id as a comparable pair (ids compare as (ms, seq), not as strings)."""
    ms, _, seq = offset.partition("-")
    return int(ms), int(seq or 0)
