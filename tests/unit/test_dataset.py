"""The point-in-time feature rows: no leakage, exact label alignment, explicit gaps, train = serve."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rtml.features.dataset import (
    FEATURE_COLUMNS,
    build_training_frame,
    feature_columns,
    features_for_asof,
    history_minutes,
    missing_minutes,
)

START = pd.Timestamp("2024-10-01 00:00", tz="UTC")


def make_minutes(n: int, seed: int = 1, start: pd.Timestamp = START) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    minute = pd.date_range(start, periods=n, freq="min", tz="UTC")
    tx = rng.poisson(120, n)
    tx[rng.random(n) < 0.03] = 0
    total = (tx * rng.lognormal(8, 0.5, n)).astype(np.int64)
    avg = np.where(tx > 0, total / np.maximum(tx, 1), np.nan)
    return pd.DataFrame(
        {
            "minute": minute,
            "tx_count": tx,
            "fee_total_sat": total,
            "fee_avg_sat": avg,
            "event_time": minute + pd.Timedelta(minutes=1),
            "revision": 1,
        }
    )


def test_columns_and_label_alignment() -> None:
    minutes = make_minutes(300)
    frame = build_training_frame(minutes, horizon=5, lags=15)
    assert list(frame.columns) == ["asof", "target_minute", *FEATURE_COLUMNS, "label"]
    assert FEATURE_COLUMNS == feature_columns(15)
    by_minute = minutes.set_index("minute")
    assert (frame["target_minute"] == frame["asof"] - pd.Timedelta(minutes=1) + pd.Timedelta(minutes=5)).all()
    assert np.array_equal(
        frame["label"].to_numpy(), by_minute.loc[frame["target_minute"], "fee_avg_sat"].to_numpy()
    )
    last_closed = frame["asof"] - pd.Timedelta(minutes=1)
    assert np.array_equal(
        frame["fee_avg_sat_lag1"].to_numpy(),
        by_minute.loc[last_closed, "fee_avg_sat"].to_numpy(),
        equal_nan=True,
    )
    lag15 = by_minute.loc[last_closed.iloc[20:] - pd.Timedelta(minutes=14), "tx_count"].to_numpy()
    assert np.array_equal(frame["tx_count_lag15"].iloc[20:].to_numpy(), lag15)
    # every row's label exists; rows with a zero-transaction target are dropped
    assert frame["label"].notna().all()
    zero_targets = minutes.loc[minutes["tx_count"] == 0, "minute"]
    assert not frame["target_minute"].isin(zero_targets).any()
    assert len(frame) == 300 - 5 - int(minutes["tx_count"].iloc[5:].eq(0).sum())


@pytest.mark.parametrize("horizon", [1, 5, 12])
def test_no_feature_uses_the_future(horizon: int) -> None:
    minutes = make_minutes(240)
    base = build_training_frame(minutes, horizon=horizon, lags=15).set_index("asof")
    for cut in (70, 150, 200):
        asof = START + pd.Timedelta(minutes=cut)
        later = minutes["event_time"] > asof
        perturbed = minutes.copy()
        perturbed.loc[later, ["tx_count", "fee_total_sat"]] *= 7
        perturbed.loc[later, "fee_avg_sat"] = perturbed.loc[later, "fee_avg_sat"] * 3 + 11
        moved = build_training_frame(perturbed, horizon=horizon, lags=15).set_index("asof")
        pd.testing.assert_series_equal(base.loc[asof, FEATURE_COLUMNS], moved.loc[asof, FEATURE_COLUMNS])
        # the label is the future and must move
        assert base.loc[asof, "label"] != moved.loc[asof, "label"]


def test_serving_row_equals_training_row() -> None:
    minutes = make_minutes(200, seed=3)
    frame = build_training_frame(minutes, horizon=5, lags=15).set_index("asof")
    for cut in (30, 61, 120, 190):
        asof = START + pd.Timedelta(minutes=cut)
        if asof not in frame.index:
            continue
        known = minutes[minutes["event_time"] <= asof].tail(60)
        row = features_for_asof(known, lags=15)
        assert row["asof"].iloc[0] == asof
        pd.testing.assert_series_equal(
            row.iloc[0][FEATURE_COLUMNS].astype("float64"),
            frame.loc[asof, FEATURE_COLUMNS].astype("float64"),
            check_names=False,
        )
        # giving the serving path more (future) minutes and an explicit asof changes nothing
        again = features_for_asof(minutes, asof=asof.to_pydatetime(), lags=15)
        pd.testing.assert_frame_equal(row, again)


def test_gaps_are_explicit_and_latest_revision_wins() -> None:
    minutes = make_minutes(120, seed=5)
    gap = minutes["minute"].between(START + pd.Timedelta(minutes=50), START + pd.Timedelta(minutes=52))
    holed = minutes[~gap]
    assert missing_minutes(holed) == list(minutes.loc[gap, "minute"])
    frame = build_training_frame(holed, horizon=5, lags=15).set_index("asof")
    # no row whose last closed minute is missing, no row whose target is missing
    for m in minutes.loc[gap, "minute"]:
        assert m + pd.Timedelta(minutes=1) not in frame.index
        assert m not in set(frame["target_minute"])
    after = frame.loc[START + pd.Timedelta(minutes=55)]
    assert np.isnan(after["fee_avg_sat_lag4"]) and not np.isnan(after["fee_avg_sat_lag2"])
    assert after["n_missing"] == history_minutes(15) - (55 - 3)
    # a newer revision of a minute replaces the older one everywhere
    fixed = holed.iloc[[40]].copy()
    fixed["fee_avg_sat"] = 1e6
    fixed["revision"] = 2
    revised = build_training_frame(pd.concat([holed, fixed]), horizon=5, lags=15).set_index("asof")
    assert revised.loc[START + pd.Timedelta(minutes=41), "fee_avg_sat_lag1"] == 1e6
    assert len(revised) == len(frame)


def test_empty_and_bad_input() -> None:
    empty = make_minutes(0)
    assert build_training_frame(empty, lags=15).empty
    with pytest.raises(ValueError, match="lacks columns"):
        build_training_frame(empty.drop(columns=["revision"]))
    with pytest.raises(ValueError, match="horizon"):
        build_training_frame(make_minutes(10), horizon=0)
