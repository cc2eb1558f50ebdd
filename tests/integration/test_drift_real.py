"""Drift on real fee regimes: blocks-mempool-2024-09-16_2024-12-15.csv (one row per block).

Per block we judge the fee level of the mempool (`avg_fee_rate`, `median_fee_rate`,
`fee_rate_90th`, sat/vB), the fee rate the block itself paid (`block_median_fee_rate`) and the
mempool's transaction count (`tx_count`): the per-block counterparts of the per-minute
`fee_avg_sat` and `tx_count`. Named periods (UTC days, inclusive):
- early-October calm: 2024-09-29 .. 2024-10-04 (block median about 2.5-3 sat/vB);
- early-November calm: 2024-10-30 .. 2024-11-08 (about 3 sat/vB);
- mid-October spike: 2024-10-10 .. 2024-10-17 (block median 10-23 sat/vB);
- mid-November spike: 2024-11-12 .. 2024-11-14 (about 15 sat/vB).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from rtml.quality.drift import drift_report

COLUMNS = ["avg_fee_rate", "median_fee_rate", "fee_rate_90th", "block_median_fee_rate", "tx_count"]
FEE_COLUMNS = {"avg_fee_rate", "fee_rate_90th", "block_median_fee_rate"}
PERIODS = {
    "early-October calm": ("2024-09-29", "2024-10-04"),
    "early-November calm": ("2024-10-30", "2024-11-08"),
    "mid-October spike": ("2024-10-10", "2024-10-17"),
    "mid-November spike": ("2024-11-12", "2024-11-14"),
}


@pytest.fixture(scope="module")
def blocks(shared_data: Path) -> pd.DataFrame:
    frame = pd.read_csv(shared_data / "blocks-mempool-2024-09-16_2024-12-15.csv")
    frame.index = pd.to_datetime(frame["block_time"], unit="s", utc=True)
    return frame.sort_index()


def period(blocks: pd.DataFrame, name: str) -> pd.DataFrame:
    first, last = PERIODS[name]
    return blocks.loc[first:last, COLUMNS]  # type: ignore[misc]


def halves(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    middle = frame.index[0] + (frame.index[-1] - frame.index[0]) / 2
    return frame[frame.index < middle], frame[frame.index >= middle]


@pytest.mark.parametrize(
    ("calm", "spike"),
    [("early-October calm", "mid-October spike"), ("early-November calm", "mid-November spike")],
)
def test_calm_against_fee_spike_is_drift(blocks: pd.DataFrame, calm: str, spike: str) -> None:
    result = drift_report(period(blocks, calm), period(blocks, spike), columns=COLUMNS, drift_share=0.5)
    assert result.drifted, result.columns
    assert FEE_COLUMNS <= set(result.drifted_columns) and result.share >= 0.8
    for column in result.columns:
        assert (
            column.method == "log_wasserstein" and column.reference_rows > 300 and column.current_rows > 300
        )


@pytest.mark.parametrize("calm", ["early-October calm", "early-November calm"])
def test_two_halves_of_a_calm_period_are_not_drift(blocks: pd.DataFrame, calm: str) -> None:
    first, second = halves(period(blocks, calm))
    result = drift_report(first, second, columns=COLUMNS, drift_share=0.5)
    assert not result.drifted and result.share <= 0.2, result.columns
    assert not FEE_COLUMNS & set(result.drifted_columns)  # no fee column moved by x1.5
    # Not trivially small: the halves do differ (the mempool backlog swings by ~50 %).
    assert max(c.statistic for c in result.columns) > 0.2


def test_evidently_default_tests_flag_calm_halves(blocks: pd.DataFrame) -> None:
    """Why the default statistic is not Evidently's K-S: on autocorrelated series it cries wolf."""
    first, second = halves(period(blocks, "early-October calm"))
    result = drift_report(first, second, columns=COLUMNS, method=None, drift_share=0.5)
    assert {c.method for c in result.columns} == {"K-S p_value"}
    assert result.drifted and result.share == 1.0
