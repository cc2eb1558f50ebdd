"""A fee regime the calm past never showed, for exercising the monitoring loop end to end.

The level-relative forecaster follows a plain step in the fee level within minutes, so a step
alone barely moves its loss. A level that starts swinging with a 20-minute period is different:
a model trained on calm minutes keeps forecasting the recent level and misses every swing
(hourly wQL far above the threshold), while a model retrained on the new minutes learns the
swing from its lags and beats both the baselines and the old champion. Tests and benchmarks use it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SWING_PERIOD_MIN = 20
SWING_AMPLITUDE = 0.9  # the level moves by a factor e^(±0.9)


def swinging_fee_minutes(start: pd.Timestamp, calm_hours: int, swing_hours: int, seed: int = 11) -> pd.DataFrame:
    """MinuteFeatures rows: a calm AR(1) fee level for `calm_hours`, then a swinging one."""
    rng = np.random.default_rng(seed)
    n_calm, n = calm_hours * 60, (calm_hours + swing_hours) * 60
    level = np.zeros(n)
    for i in range(1, n):
        level[i] = 0.97 * level[i - 1] + rng.normal(0, 0.03)
    t = np.arange(n)
    swing = np.where(t >= n_calm, SWING_AMPLITUDE * np.sin(2 * np.pi * t / SWING_PERIOD_MIN), 0.0)
    counts = rng.poisson(150, n)
    avg = 4000 * np.exp(level + swing + rng.normal(0, 0.05, n))
    minute = pd.date_range(start, periods=n, freq="min")
    total = np.rint(avg * counts).astype(np.int64)
    return pd.DataFrame(
        {
            "minute": minute,
            "tx_count": counts,
            "fee_total_sat": total,
            "fee_avg_sat": total / counts,
            "event_time": minute + pd.Timedelta(minutes=1),
            "revision": 0,
        }
    )
