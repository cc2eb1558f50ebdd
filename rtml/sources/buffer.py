"""The live sources' outage buffer: frames that arrive while the stream's store is unreachable.

A websocket or REST frame cannot be asked for again, so while Redis is down the ingester keeps
each batch it could not store, raw, with its source and arrival time: in memory up to
`ingest.buffer_memory_events` events, then appended to `<data_dir>/ingest-buffer.spool` up to
`ingest.buffer_disk_bytes`; past both, the batch is dropped and counted (`buffer_dropped`).
Once the store answers, the batches go through the ordinary pipeline in arrival order (memory
first, then disk, then the new frame), so dedup still marks a batch only after its append.

What a crash leaves behind: the disk part survives and is delivered by the next ingester
(a batch delivered but not yet cut from the file is delivered again, which dedup and the
engine's per-tx_hash count make harmless); the memory part is lost with the process, so
`close` spills it to disk on a clean stop (past the disk bound if need be: nothing held is
dropped by a stop).

Replays and synthetic traffic never buffer: they wait for the store (back-pressure).
"""

from __future__ import annotations

import os
import pickle
import struct
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from rtml.config import Settings

# (source, ingest time in ms, raw inputs)
Held = tuple[str, int, list[Any]]
_LEN = struct.Struct("<I")


class OutageBuffer:
    def __init__(self, settings: Settings) -> None:
        self.max_events = settings.ingest.buffer_memory_events
        self.max_bytes = settings.ingest.buffer_disk_bytes
        self.path = settings.path("ingest-buffer.spool")
        self.memory: deque[Held] = deque()
        self.memory_events = 0
        # Where the next undelivered record of the disk part starts.
        self._disk_pos = 0
        self.disk_events = self._count_disk()
        # Dropped by this process (health), and not yet added to the ingest counters by any
        # process (kept in a file: a stop during the outage must not forget them).
        self.dropped = 0
        self._unreported_path = settings.path("ingest-buffer.dropped")

    @property
    def unreported(self) -> int:
        try:
            return int(self._unreported_path.read_text() or 0)
        except FileNotFoundError:
            return 0

    def reported(self, n: int) -> None:
        """`n` drops are in the ingest counters now (a crash just before this counts them twice)."""
        self._set_unreported(self.unreported - n)

    def _set_unreported(self, n: int) -> None:
        tmp = self._unreported_path.with_suffix(".tmp")
        tmp.write_text(str(n))
        tmp.replace(self._unreported_path)

    def __len__(self) -> int:
        """Events held, in memory and on disk."""
        return self.memory_events + self.disk_events

    def _disk_bytes(self) -> int:
        try:
            return os.path.getsize(self.path) - self._disk_pos
        except FileNotFoundError:
            return 0

    def _count_disk(self) -> int:
        """Events a previous ingester left on disk; a torn last record is cut off first."""
        records = self._read_disk(sizes=True)
        end = sum(_LEN.size + size for size, _ in records)
        if self._disk_bytes() > end:
            os.truncate(self.path, end)
        return sum(len(held[2]) for _, held in records)

    def put(self, raws: Sequence[Any], source: str, ingest_time: int) -> bool:
        """Hold a batch; False when it was dropped (both bounds full)."""
        held: Held = (source, ingest_time, list(raws))
        if not self.disk_events and self.memory_events + len(raws) <= self.max_events:
            self.memory.append(held)
            self.memory_events += len(raws)
            return True
        return self._to_disk(held)

    def _to_disk(self, held: Held, force: bool = False) -> bool:
        blob = pickle.dumps(held, protocol=pickle.HIGHEST_PROTOCOL)
        if not force and self._disk_bytes() + _LEN.size + len(blob) > self.max_bytes:
            self.dropped += len(held[2])
            self._set_unreported(self.unreported + len(held[2]))
            return False
        with open(self.path, "ab") as out:
            out.write(_LEN.pack(len(blob)) + blob)
            out.flush()
            os.fsync(out.fileno())
        self.disk_events += len(held[2])
        return True

    def _read_disk(self, sizes: bool = False) -> list[Any]:
        """The undelivered disk records (with their sizes); a torn last record (a crash
        mid-write) is ignored."""
        try:
            with open(self.path, "rb") as spool:
                spool.seek(self._disk_pos)
                data = spool.read()
        except FileNotFoundError:
            return []
        out, pos = [], 0
        while pos + _LEN.size <= len(data):
            (size,) = _LEN.unpack_from(data, pos)
            if pos + _LEN.size + size > len(data):
                break
            held = pickle.loads(data[pos + _LEN.size : pos + _LEN.size + size])  # noqa: S301 - our own file
            out.append((size, held) if sizes else held)
            pos += _LEN.size + size
        return out

    def drain(self, store: Callable[[Held], object]) -> None:
        """Hand every held batch to `store`, oldest first, forgetting each once stored; a batch
        whose `store` raises stays first in line (the exception propagates)."""
        while self.memory:
            store(self.memory[0])
            self.memory_events -= len(self.memory.popleft()[2])
        if not self.disk_events:
            return
        for size, held in self._read_disk(sizes=True):
            store(held)
            self._disk_pos += _LEN.size + size
            self.disk_events -= len(held[2])
        os.remove(self.path)  # all delivered: start the file afresh
        self._disk_pos, self.disk_events = 0, 0

    def spill(self) -> None:
        """Move the memory part to disk (a clean stop while the store is still down); the disk
        part may then exceed its bound by at most the memory part's."""
        if not self.memory:
            return
        older = list(self.memory)
        tail = self._read_disk()
        self.memory.clear()
        self.memory_events = 0
        if os.path.exists(self.path):
            os.remove(self.path)
        self._disk_pos, self.disk_events = 0, 0
        for held in older + tail:  # memory is older than what went to disk after it filled
            self._to_disk(held, force=True)
