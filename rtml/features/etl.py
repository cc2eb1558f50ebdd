"""ETL: a point-in-time correct training set from the feature store, with a data card.

Two steps, each point-in-time correct, so their composition is:
1. Feast historical retrieval (`get_historical_features`): on DuckDB one entity row per minute
   m of the span, timestamped at m's close (m + 1 min), so Feast returns minute m as known when
   it closed; on PostgreSQL the range retrieval of rows closed in the span (the same rows, as
   the table holds one row per minute stamped at its close; see `historical_minutes`).
   A minute with no row is missing.
2. `build_training_frame`: the features of as-of t use only minutes closed by t (lags are
   shifts >= 0, rolling windows are trailing), the label is the minute closing at t + horizon.
tests/integration/test_features_store.py proves it on a real replay: perturbing every minute
closed after t leaves row t unchanged, and the labels sit exactly `horizon` minutes ahead.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from rtml.config import Settings
from rtml.features.dataset import (
    MINUTE,
    build_training_frame,
    feature_columns,
    history_minutes,
)
from rtml.features.feast_repo import MINUTE_VIEW, ensure_repo

if TYPE_CHECKING:
    from feast import FeatureStore

_FEATURES = [f"{MINUTE_VIEW}:{name}" for name in ("tx_count", "fee_total_sat", "fee_avg_sat", "revision")]


def _utc(value: datetime | str | pd.Timestamp) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def historical_minutes(store: FeatureStore, first: pd.Timestamp, last: pd.Timestamp) -> pd.DataFrame:
    """Minutes first..last (inclusive) as known when each closed, via Feast's historical retrieval.

    DuckDB: an entity row per minute at its close time (the point-in-time join). PostgreSQL:
    Feast's entity-less range retrieval of the rows whose event time (= close) lies in the
    span; its entity-row join needs minutes for 43,200 rows. The two are the same rows: the
    offline table holds one row per minute, timestamped at its close.
    """
    minutes = pd.date_range(first, last, freq="min", tz="UTC")
    if store.config.offline_store.type == "postgres":
        job = store.get_historical_features(
            features=_FEATURES,
            start_date=(first + MINUTE).to_pydatetime(),
            end_date=(last + MINUTE).to_pydatetime(),
        )
    else:
        entity_df = pd.DataFrame(
            {
                "minute_key": (minutes.as_unit("ns").asi8 // 10**9).astype("int64"),
                "event_timestamp": minutes + MINUTE,
            }
        )
        job = store.get_historical_features(entity_df=entity_df, features=_FEATURES)
    joined = job.to_df()
    joined = joined[joined["revision"].notna()]
    minute = pd.to_datetime(joined["minute_key"].astype("int64"), unit="s", utc=True).dt.as_unit("ns")
    frame = pd.DataFrame(
        {
            "minute": minute,
            "tx_count": joined["tx_count"].astype("int64"),
            "fee_total_sat": joined["fee_total_sat"].astype("int64"),
            "fee_avg_sat": joined["fee_avg_sat"].astype("float64"),
            "event_time": minute + MINUTE,
            "revision": joined["revision"].astype("int64"),
        }
    )
    frame = frame[(frame["minute"] >= first) & (frame["minute"] <= last)]
    return frame.sort_values("minute", ignore_index=True)


def _ranges(missing: pd.DatetimeIndex) -> list[list[str]]:
    """Consecutive missing minutes as [first, last] pairs (ISO)."""
    if missing.empty:
        return []
    breaks = (missing[1:] - missing[:-1]) != MINUTE
    out: list[list[str]] = []
    start = missing[0]
    for prev, cur, brk in zip(missing[:-1], missing[1:], breaks, strict=True):
        if brk:
            out.append([start.isoformat(), prev.isoformat()])
            start = cur
    out.append([start.isoformat(), missing[-1].isoformat()])
    return out


def build_dataset(
    settings: Settings,
    start: datetime | str | pd.Timestamp,
    end: datetime | str | pd.Timestamp,
    horizon: int | None = None,
    out: Path | None = None,
    store: FeatureStore | None = None,
) -> dict[str, Any]:
    """Write the training rows with start <= asof <= end to Parquet, and its data card; return the card."""
    horizon = settings.model.horizon_min if horizon is None else horizon
    lags = settings.features.lags
    start_ts, end_ts = _utc(start).floor("min"), _utc(end).floor("min")
    if end_ts < start_ts:
        raise ValueError(f"end {end_ts} is before start {start_ts}")
    # as-of t needs minutes t - history .. t - 1 for features and t - 1 + horizon for the label
    first = start_ts - history_minutes(lags) * MINUTE
    last = end_ts - MINUTE + horizon * MINUTE
    store = store or ensure_repo(settings)
    minutes = historical_minutes(store, first, last)
    frame = build_training_frame(minutes, horizon=horizon, lags=lags)
    frame = frame[(frame["asof"] >= start_ts) & (frame["asof"] <= end_ts)].reset_index(drop=True)
    if out is None:
        out = settings.path(
            "datasets", f"train_{start_ts:%Y%m%dT%H%M}_{end_ts:%Y%m%dT%H%M}_h{horizon}.parquet"
        )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, out)
    grid = pd.date_range(first, last, freq="min", tz="UTC")
    absent = grid.difference(pd.DatetimeIndex(minutes["minute"]))
    if len(minutes):
        inside = (absent > minutes["minute"].iloc[0]) & (absent < minutes["minute"].iloc[-1])
        missing, outside = absent[inside], int((~inside).sum())
    else:
        missing, outside = absent[:0], len(absent)
    card = {
        "path": str(out),
        "rows": len(frame),
        "span": {
            "start": start_ts.isoformat(),
            "end": end_ts.isoformat(),
            "first_asof": frame["asof"].min().isoformat() if len(frame) else None,
            "last_asof": frame["asof"].max().isoformat() if len(frame) else None,
            "minutes_read": [first.isoformat(), last.isoformat()],
        },
        "horizon_min": horizon,
        "lags": lags,
        "label": "fee_avg_sat of target_minute = asof - 1 min + horizon",
        "asof": "features use only minutes whose event_time (window end) <= asof",
        "feature_columns": feature_columns(lags),
        "minutes_in_store": len(minutes),
        # gaps between the first and last minute the store has in the span read
        "missing_minutes": {"count": len(missing), "ranges": _ranges(missing)},
        # minutes of the span read before the store's first / after its last minute
        "minutes_outside_store": outside,
        "label_missing_rows": int(
            ((pd.date_range(start_ts, end_ts, freq="min", tz="UTC")).size) - len(frame)
        ),
        "source": f"feast get_historical_features ({settings.profile} offline store)",
        "created_at": datetime.now(UTC).isoformat(),
    }
    card_path = out.with_suffix(".card.json")
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    card["card_path"] = str(card_path)
    return card
