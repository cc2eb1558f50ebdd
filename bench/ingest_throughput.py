"""Ingestion throughput: 1 million blockchain.com `utx` frames at max speed through parse, validate,
dedup and stream append on the embedded profile (issue 3 asks for >= 200,000 events/s).

The frames are the real recording `../shared/data/utx-2020-11-24.jsonl.gz` repeated with the first
six hash characters replaced by the copy number (so every frame is a distinct transaction), plus
0.5 % repeats so dedup has work. They are written once to a plain JSONL file and replayed through
the real `rtml ingest --source replay --speed max` path (`replay.read_lines` + `Ingestor`).

    .venv/bin/python bench/ingest_throughput.py [--events 1000000] [--file utx.jsonl.gz]

`--against DIR` (a checkout of earlier code, e.g. `git archive <commit> | tar -x -C DIR`) also
times that code's `parse_batch`, `read_lines` and store stage (`Ingestor._store`: clock, dedup
check, stream append, dedup mark, counters; a fresh data directory each round) against this
one's on the same frames, in alternating rounds in one process (best CPU time of each, so
other processes' load counts less), so the ratio holds on a busy machine where whole runs vary
by 2x: a change may cost at most 5 %.
"""

from __future__ import annotations

import argparse
import gzip
import os
import random
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = (
    Path(os.environ.get("RTML_SHARED_DATA", REPO.parent / "shared" / "data")) / "utx-2020-11-24.jsonl.gz"
)


def make_frames(source: Path, events: int, target: Path) -> int:
    """Write `events` distinct frames plus 0.5 % repeats; returns the number of lines written."""
    base = gzip.open(source, "rb").read().splitlines()
    rnd = random.Random(1)
    written = 0
    with open(target, "wb") as out:
        for i in range(events):
            copy, line = divmod(i, len(base))
            frame = base[line]
            at = frame.index(b'"hash":"') + 8
            frame = frame[:at] + b"%06x" % copy + frame[at + 6 :]
            out.write(frame + b"\n")
            written += 1
            if rnd.random() < 0.005:
                out.write(frame + b"\n")
                written += 1
    return written


def compare(against: Path, frames: Path, rounds: int = 8) -> None:
    """Best-of-`rounds` time of this code's and `against`'s parse, read and store stages, alternating."""
    import importlib.util
    import sys

    from rtml import contracts
    from rtml.sources import replay

    def load(name: str, path: Path) -> object:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module

    old_contracts = load("rtml_before_contracts", against / "rtml" / "contracts.py")
    sample = [line for _, line in zip(range(200_000), replay.read_lines(frames), strict=False)]

    def parse_time(module: object) -> float:
        t = time.process_time()
        module.parse_batch(sample, "bench", 0)  # type: ignore[attr-defined]
        return time.process_time() - t

    def read_time(module: object) -> float:
        t = time.process_time()
        for _ in module.read_lines(frames):  # type: ignore[attr-defined]
            pass
        return time.process_time() - t

    old_replay = load("rtml_before_replay", against / "rtml" / "sources" / "replay.py")
    # The earlier Ingestor, bound to the earlier dedup (the rest of its imports are this code's).
    from rtml.sources import ingest

    current = sys.modules["rtml.stream.dedup"]
    sys.modules["rtml.stream.dedup"] = load("rtml_before_dedup", against / "rtml" / "stream" / "dedup.py")
    try:
        old_ingest = load("rtml_before_ingest", against / "rtml" / "sources" / "ingest.py")
    finally:
        sys.modules["rtml.stream.dedup"] = current
    rows, _ = contracts.parse_batch(sample, "bench", 0)
    batches = [rows[i : i + 20_000] for i in range(0, len(rows), 20_000)]

    def store_time(module: object) -> float:
        from rtml.config import get_settings

        with tempfile.TemporaryDirectory(prefix="rtml-bench-store-") as tmp:
            with module.Ingestor(get_settings(data_dir=Path(tmp))) as ingestor:  # type: ignore[attr-defined]
                t = time.process_time()
                for batch in batches:
                    ingestor._store(len(batch), batch, [])
                return time.process_time() - t

    for stage, timer, new, old in (
        ("parse+validate", parse_time, contracts, old_contracts),
        ("read_lines", read_time, replay, old_replay),
        ("store (clock, dedup, append)", store_time, ingest, old_ingest),
    ):
        best_new = best_old = float("inf")
        for r in range(rounds):  # each goes first in every other round (no order bias)
            if r % 2:
                best_new = min(best_new, timer(new))
            best_old = min(best_old, timer(old))
            if not r % 2:
                best_new = min(best_new, timer(new))
        print(
            f"{stage}: before {best_old:.3f} s, after {best_new:.3f} s CPU (best of {rounds}):"
            f" {100 * (best_new / best_old - 1):+.1f} % time, load {loadavg()}"
        )


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--file", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--serial", action="store_true", help="One thread: no parse/store overlap.")
    parser.add_argument("--against", type=Path, help="A checkout of earlier code to compare the stages with.")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="rtml-bench-") as tmp:
        os.environ["RTML_DATA_DIR"] = str(Path(tmp) / "data")
        os.environ["RTML_PROFILE"] = "embedded"
        os.environ["RTML_CONFIG"] = str(Path(tmp) / "absent.toml")
        from rtml.config import get_settings
        from rtml.contracts import parse_batch
        from rtml.sources.ingest import Ingestor
        from rtml.sources.replay import paced_batches, read_lines

        frames = Path(tmp) / "frames.jsonl"
        lines = make_frames(args.file, args.events, frames)
        print(f"{lines:,} frames ({frames.stat().st_size / 1e6:.0f} MB), load before: {loadavg()}")

        # Stage costs on the first 100k frames, for the breakdown.
        sample = [line for _, line in zip(range(100_000), read_lines(frames), strict=False)]
        t = time.perf_counter()
        rows, _ = parse_batch(sample, "bench", 0)
        parse_rate = len(sample) / (time.perf_counter() - t)

        settings = get_settings()

        def cpu_now() -> float:
            """This process and its reaped children (the parse worker)."""
            t = os.times()
            return t.user + t.system + t.children_user + t.children_system

        cpu0 = cpu_now()
        t0 = time.perf_counter()
        with Ingestor(settings) as ingestor:
            if args.serial:
                for batch in paced_batches(read_lines(frames), None):
                    ingestor.ingest(batch, "replay")
            else:
                ingestor.ingest_all(paced_batches(read_lines(frames), None), "replay")
            totals = ingestor.totals
        elapsed = time.perf_counter() - t0
        cpu = cpu_now() - cpu0
        print(
            f"received {totals.received:,}, valid {totals.valid:,}, duplicates {totals.duplicates:,},"
            f" dead letters {totals.dead_letters:,}, appended {totals.appended:,}"
        )
        print(f"parse+validate alone: {parse_rate:,.0f} frames/s")
        print(
            f"end to end (read, parse, validate, dedup, append): {totals.received / elapsed:,.0f} events/s"
            f" ({elapsed:.2f} s wall, {cpu:.2f} s CPU incl. the parse worker)"
        )
        print(
            f"CPU cost: {cpu / totals.received * 1e6:.2f} µs per event ="
            f" {totals.received / cpu:,.0f} events per CPU-second (parse in a worker process, dedup + append here)"
        )
        print(f"load after: {loadavg()} on {os.cpu_count()} cores")
        if args.against is not None:
            compare(args.against.resolve(), frames)


if __name__ == "__main__":
    main()
