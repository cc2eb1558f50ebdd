"""Point-in-time feature rows: one pure function for training sets and for serving.

Time semantics (the one definition every part uses):
- A minute `m` (window start, UTC) becomes known when it closes, at its `event_time` = m + 1 min.
- A row's `asof` is a point in time t. The features of that row use only minutes whose
  `event_time` <= t. Rows are built at t = end of a closed minute, so the *last closed minute*
  is `asof - 1 min` and lag 1 is that minute, lag k the minute `asof - k min`.
- `target_minute` = last closed minute + horizon, and `label` = its `fee_avg_sat`, i.e. the
  value of the minute that closes at `asof + horizon`. This is what `Forecast.target_minute`
  predicts; `Forecast.feature_time` is `asof`.

Gaps: the aggregation engine emits every minute (zeros when nothing happened, with a null
`fee_avg_sat`), so a minute absent from the input is *missing* (the pipeline was down).
The input is put on a dense minute grid; missing minutes are NaN in lags and skipped by the
rolling statistics, and `n_missing` counts the missing minutes among the last
`history_minutes(lags)` before the as-of time. Rows are emitted only at as-of times whose last
closed minute is present, and only when the label exists (target present, tx_count > 0).

`features_for_asof` runs the very same `_feature_table` on the last minutes, so a model sees
identical features in training and serving (the fit/predict consistency of scikit-learn).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from rtml.config import get_settings

METRICS = ("tx_count", "fee_total_sat", "fee_avg_sat")
ROLL_WINDOWS = (5, 15, 60)
INPUT_COLUMNS = ("minute", "tx_count", "fee_total_sat", "fee_avg_sat", "event_time", "revision")
MINUTE = pd.Timedelta(minutes=1)


def history_minutes(lags: int) -> int:
    """How many minutes before the as-of time one feature row looks at."""
    return max(lags, max(ROLL_WINDOWS))


def feature_columns(lags: int) -> list[str]:
    """The model's input columns, in order, for `lags` lags."""
    cols = [f"{m}_lag{k}" for m in METRICS for k in range(1, lags + 1)]
    for w in ROLL_WINDOWS:
        cols += [f"{m}_mean{w}" for m in METRICS]
        cols += [f"fee_avg_sat_std{w}", f"fee_avg_sat_spread{w}"]
    cols += ["fee_avg_sat_diff1", "n_missing", "minute_of_day", "day_of_week"]
    return cols


FEATURE_COLUMNS: list[str] = feature_columns(get_settings().features.lags)


def latest_revisions(minutes: pd.DataFrame) -> pd.DataFrame:
    """One row per minute (latest revision wins), sorted, with tz-aware UTC timestamps."""
    missing = set(INPUT_COLUMNS) - set(minutes.columns)
    if missing:
        raise ValueError(f"minutes frame lacks columns {sorted(missing)}")
    df = minutes.loc[:, list(INPUT_COLUMNS)].copy()
    for col in ("minute", "event_time"):
        df[col] = pd.to_datetime(df[col], utc=True)
    for col in ("minute", "event_time"):
        df[col] = df[col].dt.as_unit("ns")
    df = df.sort_values(["minute", "revision"]).drop_duplicates("minute", keep="last")
    return df.reset_index(drop=True)


def _dense(minutes: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    """Minutes start..end (inclusive) on a dense grid indexed by minute; `present` marks real rows."""
    grid = pd.date_range(start, end, freq="min", tz="UTC", name="minute")
    df = minutes.set_index("minute").reindex(grid)
    df["present"] = df["revision"].notna()
    return df


def _feature_table(grid: pd.DataFrame, lags: int) -> pd.DataFrame:
    """Features for every grid minute m as the last closed minute (asof = m + 1 min).

    Every column at position m is a function of grid rows <= m only (shifts by >= 0 and
    trailing rolling windows), which is what makes the rows point-in-time correct.
    """
    out: dict[str, pd.Series] = {}
    values = {m: grid[m].astype("float64") for m in METRICS}
    for m in METRICS:
        for k in range(1, lags + 1):
            out[f"{m}_lag{k}"] = values[m].shift(k - 1)
    fee = values["fee_avg_sat"]
    for w in ROLL_WINDOWS:
        for m in METRICS:
            out[f"{m}_mean{w}"] = values[m].rolling(w, min_periods=1).mean()
        roll = fee.rolling(w, min_periods=1)
        out[f"fee_avg_sat_std{w}"] = roll.std(ddof=0)
        out[f"fee_avg_sat_spread{w}"] = roll.max() - roll.min()
    out["fee_avg_sat_diff1"] = fee - fee.shift(1)
    present = grid["present"].astype("float64")
    window = history_minutes(lags)
    out["n_missing"] = window - present.rolling(window, min_periods=1).sum()
    asof = pd.DatetimeIndex(grid.index) + MINUTE
    out["minute_of_day"] = pd.Series(asof.hour * 60 + asof.minute, index=grid.index, dtype="float64")
    out["day_of_week"] = pd.Series(asof.dayofweek, index=grid.index, dtype="float64")
    table = pd.DataFrame(out, index=grid.index)
    return table[feature_columns(lags)]


def build_training_frame(minutes: pd.DataFrame, horizon: int = 5, lags: int | None = None) -> pd.DataFrame:
    """Training rows: `asof`, `target_minute`, the feature columns, `label`.

    `minutes` has one row per minute (columns of MinuteFeatures; several revisions allowed,
    the latest wins). One output row per as-of time whose last closed minute is present and
    whose label is known; see the module docstring for the exact time semantics.
    """
    lags = get_settings().features.lags if lags is None else lags
    if horizon < 1:
        raise ValueError("horizon must be at least 1 minute")
    columns = ["asof", "target_minute", *feature_columns(lags), "label"]
    df = latest_revisions(minutes)
    if df.empty:
        return pd.DataFrame({c: pd.Series(dtype="float64") for c in columns})
    grid = _dense(df, df["minute"].iloc[0], df["minute"].iloc[-1])
    table = _feature_table(grid, lags)
    table["label"] = grid["fee_avg_sat"].astype("float64").shift(-horizon)
    index = pd.DatetimeIndex(grid.index)
    table["asof"] = index + MINUTE
    table["target_minute"] = index + pd.Timedelta(minutes=horizon)
    keep = grid["present"].to_numpy() & table["label"].notna().to_numpy()
    return table.loc[keep, columns].reset_index(drop=True)


def features_for_asof(
    minutes: pd.DataFrame, asof: datetime | pd.Timestamp | None = None, lags: int | None = None
) -> pd.DataFrame:
    """One feature row for serving at `asof` (default: the end of the newest minute given).

    Only minutes closed by `asof` are used. `asof` is floored to a minute boundary; if the
    minute just before it is missing, its lags are NaN and `n_missing` says so (the caller
    decides whether such a row is fresh enough). Columns: `asof`, then the feature columns.
    """
    lags = get_settings().features.lags if lags is None else lags
    df = latest_revisions(minutes)
    if asof is None:
        if df.empty:
            raise ValueError("no minutes to build features from")
        at = df["event_time"].max()
    else:
        at = pd.Timestamp(asof)
        at = at.tz_localize("UTC") if at.tzinfo is None else at.tz_convert("UTC")
    at = at.floor("min").as_unit("ns")
    last = at - MINUTE
    first = last - (history_minutes(lags) - 1) * MINUTE
    df = df[(df["minute"] >= first) & (df["event_time"] <= at)]
    grid = _dense(df, first, last)
    row = _feature_table(grid, lags).iloc[[-1]].reset_index(drop=True)
    row.insert(0, "asof", at)
    return row


def features_for_range(
    minutes: pd.DataFrame, first_asof: pd.Timestamp, last_asof: pd.Timestamp, lags: int | None = None
) -> pd.DataFrame:
    """`features_for_asof` at every minute boundary in [first_asof, last_asof], in one pass.

    The same trailing table on one grid covering `history_minutes` before `first_asof`: row t
    equals `features_for_asof(minutes, t)` (each column at t reads only minutes closed by t), at
    a fraction of the cost per row. Indexed by `asof`; columns are the feature columns.
    """
    lags = get_settings().features.lags if lags is None else lags
    df = latest_revisions(minutes)
    first_last = first_asof - MINUTE
    grid_start = first_last - (history_minutes(lags) - 1) * MINUTE
    df = df[(df["minute"] >= grid_start) & (df["event_time"] <= last_asof)]
    grid = _dense(df, grid_start, last_asof - MINUTE)
    table = _feature_table(grid, lags)
    table.index = pd.DatetimeIndex(grid.index) + MINUTE
    table.index.name = "asof"
    return table.loc[first_asof:]


def missing_minutes(minutes: pd.DataFrame) -> list[pd.Timestamp]:
    """Minutes absent between the first and last minute of the frame (the pipeline's gaps)."""
    df = latest_revisions(minutes)
    if df.empty:
        return []
    grid = pd.date_range(df["minute"].iloc[0], df["minute"].iloc[-1], freq="min", tz="UTC")
    return list(grid.difference(pd.DatetimeIndex(df["minute"])))


def minutes_from_totals(minute: Any, tx_count: Any, fee_total_sat: Any, revision: int = 1) -> pd.DataFrame:
    """A minutes frame from per-minute starts, counts and fee totals (empty minutes: null average)."""
    start = pd.to_datetime(minute, utc=True)
    tx = np.asarray(tx_count, dtype=np.int64)
    total = np.asarray(fee_total_sat, dtype=np.int64)
    return pd.DataFrame(
        {
            "minute": start,
            "tx_count": tx,
            "fee_total_sat": total,
            "fee_avg_sat": np.where(tx > 0, total / np.maximum(tx, 1), np.nan),
            "event_time": start + pd.Timedelta(minutes=1),
            "revision": revision,
        }
    )


def minutes_frame(rows: list[object]) -> pd.DataFrame:
    """MinuteFeatures objects (or dicts with their fields) as a minutes frame."""
    records = [r if isinstance(r, dict) else {c: getattr(r, c) for c in INPUT_COLUMNS} for r in rows]
    df = pd.DataFrame.from_records(records, columns=list(INPUT_COLUMNS))
    for col in ("minute", "event_time"):
        df[col] = pd.to_datetime(df[col], utc=True)
    df["fee_avg_sat"] = df["fee_avg_sat"].astype("float64")
    return df.astype({"tx_count": np.int64, "fee_total_sat": np.int64, "revision": np.int64})
