"""How fast `rtml --help` answers (issue 2: under 1 s): heavy libraries stay out of the CLI's import."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

RUNS = 10


def main() -> None:
    rtml = Path(sys.executable).with_name("rtml")
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        subprocess.run([str(rtml), "--help"], capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(f"rtml --help over {RUNS} runs: median {statistics.median(times):.3f} s, max {max(times):.3f} s "
          f"(load average {' '.join(load)})")


if __name__ == "__main__":
    main()
