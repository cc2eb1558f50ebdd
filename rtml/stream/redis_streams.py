"""The services stream: a Redis Stream `{namespace}:stream:tx`, entry ids as offsets.

Each entry has one field `j`, a compact JSON array in TxEvent field order
`[tx_hash, event_time, fee_sat, size, source, ingest_time]`: one field keeps entries small
and lets a reader decode a whole batch with a single `json.loads` (the Spark data source
reads exactly this format). Consumer offsets live in the hash `{namespace}:offsets`.

A Redis without persistence that restarts comes back empty: the stream is gone under its
readers. The key `{namespace}:stream:identity` names the stream; whoever first finds it missing
(an append, a read, an open) names the new stream and drops the old offsets, atomically. Every
read checks the name in the same round trip and raises `StreamReset` once when it changed;
offset commits are written only under the name they were read from, so a stale one never lands
in the new stream's offsets.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from typing import Any

import redis

from rtml.contracts import TxEvent
from rtml.stream.base import AppendMark, Offset, Row, Slim, Stream, StreamReset, redis_stream_key

# Entries per script call.
_CHUNK = 5000


# Name the stream if it has no name (new, or lost), dropping the offsets of the lost one.
_ENSURE = "if redis.call('SET', KEYS[1], ARGV[1], 'NX') then redis.call('DEL', KEYS[2]) end "
# One round trip, atomic (a script runs whole or not at all), in order; returns the last id,
# the stream's name and how many entries it has taken since it was created (-1 before Redis 7).
_XADD_ALL = (
    "if redis.call('SET', KEYS[2], ARGV[1], 'NX') then redis.call('DEL', KEYS[3]) end "
    "local last for i = 2, #ARGV do last = redis.call('XADD', KEYS[1], '*', 'j', ARGV[i]) end "
    "local info = redis.call('XINFO', 'STREAM', KEYS[1]) local added = -1 "
    "for i = 1, #info, 2 do if info[i] == 'entries-added' then added = info[i + 1] end end "
    "return {last, redis.call('GET', KEYS[2]), added}"
)
_NAME = _ENSURE + "return redis.call('GET', KEYS[1])"
# An offset commit lands only in the stream it was read from.
_COMMIT = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('HSET', KEYS[2], ARGV[2], ARGV[3]) return 1 end return 0"
)


class RedisStream(Stream):
    def __init__(self, url: str, namespace: str) -> None:
        self._r = redis.Redis.from_url(url)
        # Raw XRANGE replies ([id, [b"j", value]] lists): redis-py's per-entry dicts cost more
        # than everything else the engine does with an event.
        self._r.set_response_callback("XRANGE", lambda response, **_: response)
        self._xadd_all = self._r.register_script(_XADD_ALL)
        self._name = self._r.register_script(_NAME)
        self._commit = self._r.register_script(_COMMIT)
        self.key = redis_stream_key(namespace)
        self.offsets_key = f"{namespace}:offsets"
        self.id_key = f"{namespace}:stream:identity"
        self.identity = self._current_name()

    def _current_name(self) -> str:
        """The stream's name, naming it (and dropping stale offsets) if it has none."""
        name = self._name(keys=[self.id_key, self.offsets_key], args=[f"redis:{self.key}:{uuid.uuid4().hex}"])
        return name.decode()  # type: ignore[no-any-return]

    def append_rows(self, rows: Sequence[Row]) -> Offset | None:
        last: Offset | None = None
        dumps = json.JSONEncoder(separators=(",", ":")).encode
        keys = [self.key, self.id_key, self.offsets_key]
        for start in range(0, len(rows), _CHUNK):
            name = f"redis:{self.key}:{uuid.uuid4().hex}"
            ids, identity, added = self._xadd_all(
                keys=keys, args=[name, *(dumps(row) for row in rows[start : start + _CHUNK])]
            )
            last = ids.decode()
            self.last_append = AppendMark(identity.decode(), last, int(added) if int(added) >= 0 else None)
        return last

    def _range(self, after: Offset | None, limit: int) -> list[Any]:
        """XRANGE and the stream's name in one round trip; `StreamReset` once the name changed."""
        low = f"({after}" if after is not None else "-"
        pipe = self._r.pipeline(transaction=False)
        pipe.get(self.id_key)
        pipe.xrange(self.key, min=low, max="+", count=limit)
        name, entries = pipe.execute()
        current = name.decode() if name is not None else self._current_name()
        if current != self.identity:
            old, self.identity = self.identity, current
            raise StreamReset(old, current)
        return entries  # type: ignore[no-any-return]

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
        self._commit(keys=[self.id_key, self.offsets_key], args=[self.identity, consumer, offset])

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
