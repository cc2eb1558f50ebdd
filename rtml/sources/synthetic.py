"""A synthetic Bitcoin transaction source calibrated on real recordings, deterministic per seed.

The generator is a per-minute process: a Poisson arrival count whose rate follows the
daily rhythm and a slow congestion level, and per-transaction fees drawn from the real fee
distribution, scaled by a slowly wandering fee level (so the average fee is forecastable
a few minutes ahead) and by an optional regime shift like the October 2024 one.
The project never reads `../shared` at run time: the numbers below are the calibration.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from rtml.contracts import MINUTE_MS, TxEvent

# Mean arrivals per minute: blocks-2021-06-26_2021-07-26.csv, Σ txs / span = 144.9 tx/min.
RATE_PER_MIN = 144.9
# Hour-of-day (UTC) multipliers of the arrival rate: same file, Σ txs per block hour / mean.
HOURLY_RHYTHM = (
    0.90, 0.89, 0.71, 0.69, 0.71, 0.73, 0.82, 0.99, 0.85, 1.00, 1.07, 1.13,
    0.99, 1.07, 1.16, 1.17, 1.27, 1.36, 0.99, 1.21, 1.23, 1.06, 1.02, 0.98,
)  # fmt: skip
# Quantiles of ln(fee in satoshi) per transaction: mempool-snapshot-2020-11-24.tsv.gz,
# the last 24 h (25,827 transactions), at the probabilities FEE_QUANTILE_P.
QUANTILE_P = (0.0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999, 1.0)
LN_FEE_QUANTILES = (
    0.693,
    5.124,
    5.642,
    6.211,
    6.873,
    7.503,
    7.958,
    8.297,
    8.56,
    8.858,
    9.139,
    9.613,
    10.106,
    11.61,
    13.617,
    13.9,
)
# Quantiles of the transaction size in bytes: same file and rows, same probabilities.
SIZE_QUANTILES = (110, 111, 142, 165, 189, 205, 223, 225, 226, 331, 373, 731, 1552, 14791, 54970, 60000)
# Regime shift: blocks-mempool-2024-09-16_2024-12-15.csv, daily median block_median_fee_rate
# went from 3.0 sat/vB (2024-09-30..10-04) to 9.4 (2024-10-10..10-16): a 3.1x step in days.
SHIFT_MULTIPLIER = 3.1
# Levels (log scale, AR(1) per minute): modelling choices, not measurements. Congestion (the
# arrival-rate level) raises fees CONGESTION_LAG_MIN minutes later, as a filling mempool does;
# with a slow independent fee level this gives the average fee a component that a 5-minute-ahead
# forecaster can learn from recent counts, and that a rolling mean cannot follow. Spreads are
# chosen so the per-transaction fee quantiles stay within 25 % of the recording's.
RATE_LEVEL_RHO, RATE_LEVEL_SD = 0.9, 0.22
FEE_LEVEL_RHO, FEE_LEVEL_SD = 0.985, 0.2
CONGESTION_BETA, CONGESTION_LAG_MIN = 1.0, 5
# After a regime shift (a scenario choice, not a measurement): the reaction to congestion.
SHIFTED_CONGESTION_BETA = 2.5


@dataclass(frozen=True)
class RegimeShift:
    """Fees are multiplied by `multiplier`, reached linearly over `ramp_minutes` from `at_minute`.

    From then on fees also react `congestion_beta` times to congestion (a full mempool makes
    bidding sharper): a change of dynamics a model trained before the shift cannot follow.
    """

    at_minute: int
    multiplier: float = SHIFT_MULTIPLIER
    ramp_minutes: int = 30
    congestion_beta: float = SHIFTED_CONGESTION_BETA


@dataclass(frozen=True)
class SyntheticConfig:
    seed: int = 7
    start: datetime = datetime(2024, 10, 1, tzinfo=UTC)
    minutes: int = 24 * 60
    rate_per_min: float = RATE_PER_MIN
    shift: RegimeShift | None = None
    source: str = "synthetic"


class SyntheticSource:
    """Yields TxEvents in event-time order; the same config always yields the same events."""

    def __init__(self, config: SyntheticConfig | None = None) -> None:
        self.config = config or SyntheticConfig()

    def _ramp(self) -> np.ndarray:
        """0 before the shift, rising linearly to 1 over its ramp."""
        cfg = self.config
        if cfg.shift is None:
            return np.zeros(cfg.minutes)
        idx = np.arange(cfg.minutes) - cfg.shift.at_minute
        return np.clip((idx + 1) / max(cfg.shift.ramp_minutes, 1), 0.0, 1.0)

    def fee_multipliers(self) -> np.ndarray:
        """Regime-shift multiplier of fees per minute (1 before the shift)."""
        shift = self.config.shift
        return 1.0 + ((shift.multiplier if shift else 1.0) - 1.0) * self._ramp()

    def congestion_betas(self) -> np.ndarray:
        """How strongly fees react to congestion, per minute."""
        shift = self.config.shift
        return CONGESTION_BETA + ((shift.congestion_beta if shift else CONGESTION_BETA) - CONGESTION_BETA) * self._ramp()

    def _ar1(self, rng: np.random.Generator, rho: float, sd: float) -> np.ndarray:
        noise = rng.normal(0.0, sd * np.sqrt(1 - rho**2), self.config.minutes)
        level = np.empty(self.config.minutes)
        prev = rng.normal(0.0, sd)
        for i, eps in enumerate(noise):
            prev = rho * prev + eps
            level[i] = prev
        return level

    def events(self) -> Iterator[TxEvent]:
        cfg = self.config
        rng = np.random.default_rng(cfg.seed)
        start_ms = int(cfg.start.timestamp() * 1000) // MINUTE_MS * MINUTE_MS
        rate_level = self._ar1(rng, RATE_LEVEL_RHO, RATE_LEVEL_SD)
        fee_level = self._ar1(rng, FEE_LEVEL_RHO, FEE_LEVEL_SD)
        multipliers = self.fee_multipliers()
        p, ln_fee, ln_size = np.array(QUANTILE_P), np.array(LN_FEE_QUANTILES), np.log(SIZE_QUANTILES)
        betas = self.congestion_betas()
        congestion = betas * np.concatenate([np.zeros(CONGESTION_LAG_MIN), rate_level])[: cfg.minutes]
        # Centre the log-levels so their mean multiplier is 1 and per-tx fees stay calibrated.
        fee_centre = -(FEE_LEVEL_SD**2 + (betas * RATE_LEVEL_SD) ** 2) / 2
        for m in range(cfg.minutes):
            minute_ms = start_ms + m * MINUTE_MS
            hour = (minute_ms // 3_600_000) % 24
            rate = cfg.rate_per_min * HOURLY_RHYTHM[hour] * np.exp(rate_level[m] - RATE_LEVEL_SD**2 / 2)
            n = int(rng.poisson(rate))
            if n == 0:
                continue
            offsets = np.sort(rng.integers(0, MINUTE_MS, n))
            scale = np.exp(fee_level[m] + congestion[m] + fee_centre[m]) * multipliers[m]
            fees = np.rint(np.exp(np.interp(rng.random(n), p, ln_fee)) * scale).astype(np.int64)
            sizes = np.rint(np.exp(np.interp(rng.random(n), p, ln_size))).astype(np.int64)
            hashes = rng.bytes(32 * n).hex()
            for i in range(n):
                t = minute_ms + int(offsets[i])
                yield TxEvent(hashes[64 * i : 64 * i + 64], t, int(fees[i]), int(sizes[i]), cfg.source, t)

    def __iter__(self) -> Iterator[TxEvent]:
        return self.events()


def to_utx_message(event: TxEvent) -> dict:
    """The blockchain.com websocket wire form of an event: inputs - outputs = fee."""
    out_value = 10_000 + (int(event.tx_hash[:8], 16) % 50_000_000)
    return {
        "op": "utx",
        "x": {
            "hash": event.tx_hash,
            "time": event.event_time // 1000,
            "size": event.size,
            "vin_sz": 1,
            "vout_sz": 1,
            "inputs": [{"prev_out": {"value": out_value + event.fee_sat, "n": 0}}],
            "out": [{"value": out_value, "n": 0}],
        },
    }
