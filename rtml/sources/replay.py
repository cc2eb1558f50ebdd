"""Replay sources: recorded JSONL / JSONL.gz (blockchain.com `utx` frames or TxEvent rows) and synthetic traffic.

Both (`FileReplay`, `SyntheticTraffic`) hand the ingestion pipeline batches of raw lines, paced
on the events' own times:
`speed=1` is real time, `speed=60` a minute a second, `speed=None` ("max") as fast as the
pipeline takes them. Pacing reads only each line's time; judging the line is the pipeline's
job, so a line without a readable time is sent at once and dead-lettered there.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import threading
import time
from abc import abstractmethod
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rtml.config import Settings
from rtml.contracts import CLOCK_CONFIRM_EVENTS, MAX_FRAME_BYTES, Oversized
from rtml.sources.base import Source, SourceOptions

if TYPE_CHECKING:
    from rtml.sources.ingest import Ingestor

# A batch of the max-speed path: big enough to amortise the per-batch transactions.
MAX_SPEED_BATCH = 20_000
# Longest a paced replay holds a due line before handing it over.
_PACED_FLUSH_S = 0.2


def parse_speed(value: str) -> float | None:
    """`max` -> None (no pacing), otherwise a positive factor of real time."""
    if value.strip().lower() == "max":
        return None
    speed = float(value)
    if not speed > 0 or math.isinf(speed):
        raise ValueError(f"speed must be a positive number or 'max', got {value!r}")
    return speed


def read_lines(path: Path, max_bytes: int = MAX_FRAME_BYTES) -> Iterator[bytes | Oversized]:
    """The non-blank lines of a JSONL file, gzip-compressed or not (by content, not by name).

    A line longer than `max_bytes` is read on in chunks and handed over as `Oversized` (its
    head, length and hash), so a file without newlines never sits in memory whole.
    """
    with open(path, "rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    stream = gzip.open(path, "rb") if gzipped else open(path, "rb")  # noqa: SIM115
    with stream:
        readline = stream.readline
        limit = max_bytes + 1
        while line := readline(limit):
            if line[-1] != 10 and len(line) > max_bytes:  # no newline within the limit
                yield _oversized(line, stream, max_bytes)
                continue
            line = line.rstrip(b"\r\n")
            if line and not line.isspace():
                yield line


def _oversized(head: bytes, stream: Any, max_bytes: int) -> Oversized:
    """Read the rest of an overlong line chunk by chunk: only its length and hash are kept."""
    digest = hashlib.sha256(head)
    length = len(head)
    while chunk := stream.readline(max_bytes):
        end = chunk.endswith(b"\n")
        chunk = chunk.rstrip(b"\r\n") if end else chunk
        digest.update(chunk)
        length += len(chunk)
        if end:
            break
    return Oversized(head, length, digest.hexdigest())


def line_time_ms(line: bytes | str | Oversized) -> int | None:
    """Event time of a `utx` frame, REST transaction or TxEvent row, if it can be read cheaply."""
    if isinstance(line, Oversized):
        return None
    try:
        obj = json.loads(line)
        if "x" in obj:
            return int(obj["x"]["time"]) * 1000
        if "event_time" in obj:
            return int(obj["event_time"])
        return int(obj["time"]) * 1000
    except (ValueError, TypeError, KeyError, IndexError, RecursionError, AttributeError, OverflowError):
        return None


def paced_batches(
    lines: Iterable[bytes | Oversized],
    speed: float | None,
    *,
    stop: threading.Event | None = None,
    deadline: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    wait: Callable[[float], object] | None = None,
    batch_size: int = MAX_SPEED_BATCH,
    max_jump_s: float = 3600.0,
) -> Iterator[list[bytes | Oversized]]:
    """Group lines into batches released when their event time is due at `speed` (None = at once).

    Stops early when `stop` is set or the `clock` passes `deadline`. `wait(seconds)` sleeps;
    by default it waits on `stop`, so a stop request interrupts a long pause.

    One line must not stall a replay for years: a line more than `max_jump_s` (the window
    semantics' `window.max_jump_s`) from the pacing clock is sent at once, unpaced; after
    CLOCK_CONFIRM_EVENTS such lines in a row the replay really jumped, and pacing re-anchors.
    """
    stop = stop or threading.Event()
    sleep = wait or stop.wait

    def over() -> bool:
        return stop.is_set() or (deadline is not None and clock() >= deadline)

    if speed is None:
        source = iter(lines)
        while (chunk := list(islice(source, batch_size))) and not over():
            yield chunk
        return
    batch: list[bytes | Oversized] = []
    first_ms: int | None = None
    paced_ms = 0
    jumped = 0
    max_jump_ms = max_jump_s * 1000
    start = clock()
    last_flush = start
    for line in lines:
        t_ms = line_time_ms(line)
        if t_ms is not None and first_ms is not None and abs(t_ms - paced_ms) > max_jump_ms:
            jumped += 1
            if jumped < CLOCK_CONFIRM_EVENTS:
                t_ms = None  # not paced: the window semantics judge it
            else:
                first_ms, paced_ms, start, jumped = t_ms, t_ms, clock(), 0
        elif t_ms is not None:
            jumped = 0
        if t_ms is not None:
            if first_ms is None:
                first_ms = paced_ms = t_ms
            paced_ms = max(paced_ms, t_ms)
            due = start + (t_ms - first_ms) / 1000 / speed
            while (now := clock()) < due:
                if batch:
                    yield batch
                    batch = []
                    last_flush = now
                if over():
                    return
                pause = due - now if deadline is None else min(due - now, deadline - now)
                sleep(max(0.0, min(pause, 1.0)))
            if over():
                break
        batch.append(line)
        if len(batch) >= batch_size or clock() - last_flush >= _PACED_FLUSH_S:
            yield batch
            batch = []
            last_flush = clock()
    if batch and not over():
        yield batch


def synthetic_lines(seed: int, duration_s: float | None, start: datetime | None = None) -> Iterator[bytes]:
    """Calibrated synthetic traffic from `start` (default: this minute) as blockchain.com `utx` frames."""
    import msgspec

    from rtml.sources.synthetic import SyntheticConfig, SyntheticSource, to_utx_message

    begin = start or datetime.now(UTC).replace(second=0, microsecond=0)
    minutes = math.ceil(duration_s / 60) + 1 if duration_s else 7 * 24 * 60
    source = SyntheticSource(SyntheticConfig(seed=seed, start=begin, minutes=minutes))
    encode = msgspec.json.encode
    for event in source.events():
        yield encode(to_utx_message(event))


class _PacedSource(Source):
    """A source of lines with their own event times, paced by `speed` (`paced_batches`)."""

    @abstractmethod
    def lines(self) -> Iterator[bytes | Oversized]:
        """The source's lines, oldest first."""

    def run(self, ingestor: Ingestor, stop: threading.Event) -> str:
        duration_s = self.options.duration_s
        deadline = None if duration_s is None else time.monotonic() + duration_s
        max_jump_s = self.settings.window.max_jump_s
        batches = paced_batches(self.lines(), self.options.speed, stop=stop, deadline=deadline, max_jump_s=max_jump_s)
        ingestor.ingest_all(batches, self.name)
        return ""


class FileReplay(_PacedSource):
    """`--source replay --file F`: a recording, JSONL or JSONL.gz."""

    name = "replay"

    def __init__(self, settings: Settings, options: SourceOptions) -> None:
        if options.file is None:
            raise ValueError("the replay source needs a file")
        super().__init__(settings, options)
        self.file = options.file

    def lines(self) -> Iterator[bytes | Oversized]:
        return read_lines(self.file)


class SyntheticTraffic(_PacedSource):
    """`--source synthetic`: calibrated synthetic traffic from this minute on (`settings.seed`)."""

    name = "synthetic"

    def lines(self) -> Iterator[bytes | Oversized]:
        return synthetic_lines(self.settings.seed, self.options.duration_s)
