"""The naive forecasts a model must beat: last value, rolling means, same minute yesterday.

Each baseline gives a point forecast from the row's own features (or, for yesterday, from
the series' history, which is far enough in the past to be known at the as-of time); its
P10/P50/P90 are the point times the empirical quantiles of the ratio actual / point on the
training rows (in log1p space), so baselines are judged by wQL on equal terms with the model.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from rtml.model.backtest import QUANTILES, Forecaster

DAY = pd.Timedelta(days=1)


def _lag_columns(frame: pd.DataFrame) -> list[str]:
    lags = [c for c in frame.columns if c.startswith("fee_avg_sat_lag")]
    return sorted(lags, key=lambda c: int(c.removeprefix("fee_avg_sat_lag")))


def last_value(frame: pd.DataFrame) -> np.ndarray:
    """The newest known minute average (lag 1, else the newest non-empty lag, else the 60-min mean)."""
    lags = frame[_lag_columns(frame)].to_numpy(dtype="float64")
    point = np.full(len(frame), np.nan)
    for j in range(lags.shape[1] - 1, -1, -1):
        col = lags[:, j]
        point = np.where(np.isnan(col), point, col)
    return np.where(np.isnan(point), frame["fee_avg_sat_mean60"].to_numpy(dtype="float64"), point)


def rolling_mean(frame: pd.DataFrame, window: int) -> np.ndarray:
    """Transaction-weighted average fee over the last `window` minutes (Σ fees / Σ transactions)."""
    total = frame[f"fee_total_sat_mean{window}"].to_numpy(dtype="float64")
    count = frame[f"tx_count_mean{window}"].to_numpy(dtype="float64")
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(count > 0, total / count, np.nan)


class PointBaseline:
    """A point rule turned into quantiles by the training rows' ratio quantiles.

    The rules that need only a row's own features (`SERVABLE`) can be saved and registered:
    they are the champion a pipeline starts with, before any model has earned its place.
    """

    kind = "baseline"

    def __init__(
        self, name: str, point: Callable[[pd.DataFrame], np.ndarray], fill_missing: bool = True
    ) -> None:
        self.name = name
        self._point = point
        self._fill_missing = fill_missing
        self._offsets = np.full(len(QUANTILES), np.nan)
        self._fallback = np.nan
        # What serving must hand to `predict`: the model's full feature row (see features.dataset).
        self.feature_columns: list[str] = []

    def fit(self, frame: pd.DataFrame) -> PointBaseline:
        point = self._point(frame)
        y = frame["label"].to_numpy(dtype="float64")
        ok = np.isfinite(point)
        self.feature_columns = [c for c in frame.columns if c not in NON_FEATURES]
        self._fallback = float(np.median(y)) if len(y) else np.nan
        if ok.any():
            resid = np.log1p(y[ok]) - np.log1p(point[ok])
            self._offsets = np.quantile(resid, QUANTILES)
        return self

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        point = self._point(frame)
        if self._fill_missing:
            point = np.where(np.isfinite(point), point, self._fallback)
        return np.maximum(np.expm1(np.log1p(point)[:, None] + self._offsets[None, :]), 0.0)

    def save(self, directory: Path) -> list[Path]:
        """`meta.json` alone: the rule's name, its calibrated offsets and fallback."""
        if self.name not in SERVABLE:
            raise ValueError(f"baseline {self.name} needs the series' history and cannot be served")
        directory.mkdir(parents=True, exist_ok=True)
        meta = {
            "kind": self.kind,
            "baseline": self.name,
            "feature_columns": self.feature_columns,
            "quantiles": list(QUANTILES),
            "offsets": [float(v) for v in self._offsets],
            "fallback": float(self._fallback),
        }
        path = directory / "meta.json"
        path.write_text(json.dumps(meta, indent=1))
        return [path]

    @classmethod
    def load(cls, directory: Path) -> PointBaseline:
        meta = json.loads((directory / "meta.json").read_text())
        model = cls(meta["baseline"], SERVABLE[meta["baseline"]])
        model.feature_columns = list(meta["feature_columns"])
        model._offsets = np.asarray(meta["offsets"], dtype="float64")
        model._fallback = float(meta["fallback"])
        return model


def same_minute_yesterday(history: pd.DataFrame) -> Callable[[pd.DataFrame], np.ndarray]:
    """The value of the target minute one day earlier, from the labels of `history`.

    NaN where the history does not reach back a day before the target: that baseline is then
    skipped by the backtest ("when the data covers it").
    """
    series = pd.Series(
        history["label"].to_numpy(dtype="float64"), index=pd.DatetimeIndex(history["target_minute"])
    )
    series = series[~series.index.duplicated()].sort_index()
    if series.empty:
        return lambda frame: np.full(len(frame), np.nan)
    grid = pd.date_range(series.index[0], series.index[-1], freq="min")
    dense = series.reindex(grid).ffill()

    def point(frame: pd.DataFrame) -> np.ndarray:
        when = pd.DatetimeIndex(frame["target_minute"]) - DAY
        return dense.reindex(when).to_numpy(dtype="float64")

    return point


def _rolling_mean_15(frame: pd.DataFrame) -> np.ndarray:
    return rolling_mean(frame, 15)


def _rolling_mean_60(frame: pd.DataFrame) -> np.ndarray:
    return rolling_mean(frame, 60)


# The point rules computed from a feature row alone: registrable, servable.
SERVABLE: dict[str, Callable[[pd.DataFrame], np.ndarray]] = {
    "last_value": last_value,
    "rolling_mean_15": _rolling_mean_15,
    "rolling_mean_60": _rolling_mean_60,
}
# Columns of a training frame that are not features.
NON_FEATURES = ("asof", "target_minute", "label")


def servable_factories() -> list[Callable[[], Forecaster]]:
    """Fresh-instance factories of the baselines that can be registered and served."""
    return [partial(PointBaseline, name, rule) for name, rule in SERVABLE.items()]


def baseline_factories(frame: pd.DataFrame) -> list[Callable[[], Forecaster]]:
    """Fresh-instance factories of every baseline, for the backtest."""
    yesterday = same_minute_yesterday(frame)
    return [
        *servable_factories(),
        lambda: PointBaseline("same_minute_yesterday", yesterday, fill_missing=False),
    ]


BASELINE_NAMES = ("last_value", "rolling_mean_15", "rolling_mean_60", "same_minute_yesterday")
