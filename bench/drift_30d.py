"""Drift run time: 30 days of minutes (43,200 rows) as reference against one day (1,440 rows).

Target (issue 6): under 2 s, import excluded. Prints the import time of Evidently separately,
then the median of REPEATS runs for: the default statistic (log_wasserstein), Evidently's
automatic choice (normed Wasserstein above 1,000 reference rows, K-S p-value up to 1,000),
K-S forced, the default plus per-transaction samples (5,000 of each side), and the report
files (HTML + JSON + index) of one run.

    .venv/bin/python bench/drift_30d.py
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("DO_NOT_TRACK", "1")

REPEATS = 5


def minutes(n: int, fee_level: float, seed: int) -> Any:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    minute = pd.date_range("2024-09-01", periods=n, freq="min", tz="UTC")
    level = np.exp(np.cumsum(rng.normal(0, 0.01, n)))  # a slowly wandering fee level
    tx = rng.poisson(145, n)
    avg = rng.lognormal(np.log(fee_level), 0.3, n) * level
    total = np.rint(avg * tx)
    return pd.DataFrame(
        {
            "minute": minute,
            "tx_count": tx,
            "fee_total_sat": total,
            "fee_avg_sat": total / tx,
            "event_time": minute + pd.Timedelta(minutes=1),
            "revision": 0,
        }
    )


def transactions(n: int, fee_level: float, seed: int) -> Any:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {"fee_sat": np.rint(rng.lognormal(np.log(fee_level), 1.4, n)), "size": rng.integers(110, 2000, n)}
    )


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    runs, out = [], None
    for _ in range(REPEATS):
        t = time.perf_counter()
        out = fn()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs), out


def main() -> None:
    t = time.perf_counter()
    from rtml.quality.drift import drift_report, import_evidently

    import_evidently()
    import_s = time.perf_counter() - t
    reference, current = minutes(43_200, 4000, 1), minutes(1_440, 4000 * 3.1, 2)
    ref_tx, cur_tx = transactions(200_000, 4000, 3), transactions(200_000, 4000 * 3.1, 4)
    drift_report(reference, current)  # warm-up (first Evidently run builds its registries)
    print(f"import evidently (+ rtml.quality.drift): {import_s:.2f} s (excluded below)")
    print(
        f"reference {len(reference):,} minutes (30 days), current {len(current):,} minutes (1 day); median of {REPEATS}"
    )
    cases: list[tuple[str, Callable[[], Any]]] = [
        ("default log_wasserstein, 3 minute columns", lambda: drift_report(reference, current)),
        ("Evidently automatic method", lambda: drift_report(reference, current, method=None)),
        ("K-S forced", lambda: drift_report(reference, current, method="ks")),
        (
            "automatic, reference cut to 1,000 rows (K-S)",
            lambda: drift_report(reference[-1000:], current, method=None),
        ),
        (
            "default + per-tx samples (3 more columns)",
            lambda: drift_report(reference, current, ref_tx, cur_tx),
        ),
    ]
    result = None
    for name, fn in cases:
        seconds, result = timed(fn)
        methods = sorted({c.method for c in result.columns})
        print(
            f"  {name:45s} {seconds:6.3f} s  verdict={result.verdict} share={result.share:.2f} method={methods}"
        )
    assert result is not None

    from rtml.config import get_settings
    from rtml.quality import reports

    with tempfile.TemporaryDirectory() as tmp:
        settings = get_settings(data_dir=tmp)
        seconds, _ = timed(lambda: reports.write_report(settings, result, kind="drift"))
        size = os.path.getsize(result.html_path or "") / 1e6
        print(f"  {'report files (HTML + JSON + index)':45s} {seconds:6.3f} s  html {size:.1f} MB")


if __name__ == "__main__":
    main()
