"""Speed invariance: the same 12 h replay through `rtml up` at `--speed max` and at `--speed 120`
gives the same sequence of event kinds and the same champion versions.

The scheduler fires on the event-time clock, so how fast the clock moves must not change what
the pipeline does: at max speed it jumps by hours, at 120x it moves a minute every half second.
Each run gets a fresh data directory (embedded profile); both sequences are printed.

    .venv/bin/python bench/speed_invariance.py [--hours 12] [--seed 7] [--speeds max,120]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(wire: Path, speed: str) -> tuple[list[str], list[str], float]:
    """One `rtml up` to settled and down; (event kinds, champion versions in order, seconds)."""
    data_dir = tempfile.mkdtemp(prefix=f"rtml-bench-speed-{speed}-")
    env = {**os.environ, "RTML_DATA_DIR": data_dir, "RTML_PROFILE": "embedded"}
    os.environ.update(env)
    from rtml.config import get_settings
    from rtml.demo import free_port, wait_settled
    from rtml.monitoring.events import EventLog

    started = time.monotonic()
    up = ["up", "--source", "replay", "--file", str(wire), "--speed", speed, "--port", str(free_port())]
    subprocess.run([sys.executable, "-m", "rtml", *up], env=env, check=True, capture_output=True)
    settings = get_settings()
    try:
        wait_settled(settings, timeout_s=3600)
    finally:
        subprocess.run([sys.executable, "-m", "rtml", "down"], env=env, check=True, capture_output=True)
    seconds = time.monotonic() - started
    log = EventLog(settings)
    events = log.recent(limit=1_000_000)
    log.close()
    kinds = [e.kind for e in events]
    champions = [str(e.details["version"]) for e in events if e.kind == "model.promoted"]
    return kinds, champions, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=12)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--speeds", default="max,120")
    args = parser.parse_args()
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    from rtml.demo import Story, write_wire_file

    wire = Path(tempfile.mkdtemp(prefix="rtml-bench-speed-")) / "wire.jsonl.gz"
    story = Story.build(args.hours, args.seed)
    frames = write_wire_file(story, wire)
    print(f"{args.hours:g} h replay, {frames:,} frames, shift at {story.shift_at:%H:%M} UTC")
    results = {}
    for speed in args.speeds.split(","):
        kinds, champions, seconds = run(wire, speed)
        results[speed] = (kinds, champions)
        counts = {k: kinds.count(k) for k in sorted(set(kinds))}
        print(f"\n--speed {speed}: {seconds:.0f} s, {len(kinds)} events, champions {' -> '.join(champions)}")
        print("  " + ", ".join(f"{k} {n}" for k, n in counts.items()))
        print("  sequence: " + " ".join(k for k in kinds if not k.startswith(("drift.ok", "quality."))))
    first, *others = results.values()
    same = all(r == first for r in others)
    print(f"\nsame sequence of event kinds and champion versions: {same}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
