"""Metrics, backtest splits, baselines, the quantile model and the gate, without MLflow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rtml.features.dataset import FEATURE_COLUMNS, build_training_frame, minutes_from_totals
from rtml.model.backtest import backtest, evaluate, pinball, rolling_origin, wql
from rtml.model.baselines import PointBaseline, baseline_factories, last_value, rolling_mean
from rtml.model.gate import ChampionComparison, decide
from rtml.model.gbm import GBMParams, QuantileGBM

START = pd.Timestamp("2024-10-01", tz="UTC")


def minutes(n: int, seed: int = 0, zero_share: float = 0.02) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    minute = pd.date_range(START, periods=n, freq="min")
    tx = rng.poisson(100, n)
    tx[rng.random(n) < zero_share] = 0
    total = np.rint(tx * rng.lognormal(8, 0.4, n)).astype(np.int64)
    return minutes_from_totals(minute, tx, total)


def test_wql_matches_a_hand_computation() -> None:
    y = np.array([10.0, 20.0])
    preds = np.array([[8.0, 10.0, 12.0], [10.0, 25.0, 30.0]])
    # q=0.1: 0.1*2 + 0.1*10 = 1.2; q=0.5: 0 + 0.5*5 = 2.5; q=0.9: 0.1*2 + 0.1*10 = 1.2
    expected = np.mean([2 * 1.2 / 30, 2 * 2.5 / 30, 2 * 1.2 / 30])
    assert wql(y, preds) == pytest.approx(expected)
    m = evaluate(y, preds)
    assert m.mae == pytest.approx(2.5)
    assert m.coverage == pytest.approx(1.0)
    assert evaluate(y, preds + 100).coverage == 0.0
    assert pinball(np.array([1.0]), np.array([3.0]), 0.9)[0] == pytest.approx(0.2)


def test_perfect_forecast_has_zero_loss_and_a_constant_one_does_not() -> None:
    y = np.linspace(100, 200, 50)
    assert wql(y, np.column_stack([y, y, y])) == 0.0
    assert wql(y, np.full((50, 3), 150.0)) > 0.05


def test_rolling_origin_never_trains_on_the_future() -> None:
    frame = build_training_frame(minutes(1500), horizon=5, lags=15)
    folds = rolling_origin(frame, folds=5)
    assert len(folds) == 5
    previous_end = None
    previous_train = 0
    for f in folds:
        train, test = frame.loc[f.train_mask], frame.loc[f.test_mask]
        assert not (f.train_mask & f.test_mask).any()
        # every training label was known when the test block starts (gap = horizon)
        assert (train["target_minute"] + pd.Timedelta(minutes=1) <= test["asof"].min()).all()
        assert train["asof"].max() <= test["asof"].min() - pd.Timedelta(minutes=5)
        # consecutive blocks, expanding window
        if previous_end is not None:
            assert test["asof"].min() > previous_end
        assert f.train_rows > previous_train
        previous_end, previous_train = test["asof"].max(), f.train_rows
    with pytest.raises(ValueError, match="sorted"):
        rolling_origin(frame.iloc[::-1].reset_index(drop=True), folds=5)


def test_baseline_points_come_from_the_rows_own_past() -> None:
    frame = build_training_frame(minutes(300, zero_share=0.1), horizon=5, lags=15)
    lv = last_value(frame)
    lag1 = frame["fee_avg_sat_lag1"].to_numpy()
    has = ~np.isnan(lag1)
    assert np.array_equal(lv[has], lag1[has])
    # a minute without transactions: the newest earlier average stands in
    row = np.flatnonzero(~has & ~np.isnan(frame["fee_avg_sat_lag2"].to_numpy()))[0]
    assert lv[row] == frame["fee_avg_sat_lag2"].iloc[row]
    rm = rolling_mean(frame, 15)
    i = 200
    assert rm[i] == pytest.approx(frame["fee_total_sat_mean15"].iloc[i] / frame["tx_count_mean15"].iloc[i])


def test_baseline_quantiles_are_calibrated_on_training_rows() -> None:
    frame = build_training_frame(minutes(3000, seed=2), horizon=5, lags=15)
    train, test = frame.iloc[:2000], frame.iloc[2000:]
    preds = PointBaseline("rolling_mean_15", lambda f: rolling_mean(f, 15)).fit(train).predict(test)
    coverage = evaluate(test["label"].to_numpy(), preds).coverage
    assert 0.7 < coverage < 0.9
    assert (np.diff(preds, axis=1) >= 0).all()


def test_same_minute_yesterday_is_skipped_when_the_data_is_shorter_than_a_day() -> None:
    frame = build_training_frame(minutes(600), horizon=5, lags=15)
    result = backtest(frame, baseline_factories(frame), folds=5)
    assert "same_minute_yesterday" in result.skipped
    assert {"last_value", "rolling_mean_15", "rolling_mean_60"} <= set(result.summary)
    longer = build_training_frame(minutes(2 * 1440 + 600), horizon=5, lags=15)
    assert "same_minute_yesterday" in backtest(longer, baseline_factories(longer), folds=5).summary


def test_quantile_model_output_never_crosses_and_survives_save_load(tmp_path: Path) -> None:
    frame = build_training_frame(minutes(1200, seed=4), horizon=5, lags=15)
    model = QuantileGBM(FEATURE_COLUMNS, GBMParams(n_estimators=40, min_data_in_leaf=20)).fit(frame)
    preds = model.predict(frame)
    assert preds.shape == (len(frame), 3)
    assert (np.diff(preds, axis=1) >= 0).all()
    assert (preds >= 0).all()
    model.save(tmp_path / "m")
    again = QuantileGBM.load(tmp_path / "m")
    np.testing.assert_allclose(again.predict(frame), preds)
    # a row with no history at all still gets a forecast (the training median level)
    empty = frame.iloc[[0]].copy()
    empty[FEATURE_COLUMNS] = np.nan
    assert np.isfinite(model.predict(empty)).all()


def test_gate_needs_the_margin_over_the_best_baseline_and_not_to_lose_to_the_champion() -> None:
    baselines = {"last_value": 0.30, "rolling_mean_15": 0.20}
    ok = decide(0.18, baselines, 0.05, None)
    assert ok.promote and ok.best_baseline == "rolling_mean_15"
    assert ok.gain_vs_baseline == pytest.approx(0.1)
    short = decide(0.195, baselines, 0.05, None)
    assert not short.promote and "< required 5.0%" in short.reasons[0]
    worse = decide(0.18, baselines, 0.05, ChampionComparison("3", 0.17, 0.18, [3, 4]))
    assert not worse.promote and "champion v3" in worse.reasons[1]
    better = decide(0.18, baselines, 0.05, ChampionComparison("3", 0.19, 0.18, [3, 4]))
    assert better.promote
