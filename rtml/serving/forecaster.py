"""The pipeline's own forecast of every closed minute (the AWS original's monitoring data collection).

At boundary t the champion forecasts the minute `t - 1 min + model.horizon_min` from the
features as of t (minutes closed by t only, the ETL's own feature code), and the forecast is
logged with kind `pipeline`, the model version and the feature time t. This is what monitoring
judges; it does not depend on anyone calling the API. The prediction log keeps one pipeline
forecast per target minute, so a boundary re-run after a crash logs nothing twice.

Cost per boundary is a dictionary lookup, one prediction and one insert: feature rows are
computed for a stretch of boundaries at once (`features_for_range`, identical rows), and the
champion is looked up again only after a job that may change it, or once a second of wall time
(a promotion by hand). Before the first champion exists a boundary logs nothing (warm-up).
"""

from __future__ import annotations

import sqlite3
import time
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from rtml.aggregate.sinks import aggregate_db_path
from rtml.config import Settings
from rtml.contracts import MINUTE_MS
from rtml.features.dataset import feature_columns, features_for_range, history_minutes
from rtml.serving.prediction_store import PIPELINE_KIND, PredictionRecord, open_prediction_store
from rtml.spool import unreachable

if TYPE_CHECKING:
    from rtml.model.registry import LoadedModel

# Feature rows computed per read of the minutes table (a jump of hours is a few reads).
CHUNK_MINUTES = 360
RECHECK_S = 1.0


class Forecaster:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.lags = settings.features.lags
        self.columns = feature_columns(self.lags)
        # Read only: the engine creates the table (before the first boundary exists).
        self._conn = sqlite3.connect(aggregate_db_path(settings), timeout=60, isolation_level=None)
        self.log = open_prediction_store(settings)
        self._rows: dict[int, np.ndarray] = {}
        self._model: LoadedModel | None = None
        self._checked = 0.0
        self._stale = True

    def model_may_change(self) -> None:
        self._stale = True

    def champion(self) -> LoadedModel | None:
        from rtml.model import registry

        if self._stale or time.monotonic() - self._checked > RECHECK_S:
            try:
                version = registry.champion_version(self.settings)
                if version is None:
                    self._model = None
                elif self._model is None or self._model.version != version:
                    self._model = registry.load_version(self.settings, version)
            except Exception as exc:
                # The registry is down (PostgreSQL): forecast with the champion known so far,
                # as serving does; with none known yet, the boundary waits (the scheduler).
                if self._model is None or not unreachable(exc):
                    raise
            else:
                self._stale, self._checked = False, time.monotonic()
        return self._model

    def features(self, t_ms: int) -> np.ndarray | None:
        """The feature row as of t (None when no minute closed in the hour before t)."""
        if t_ms not in self._rows:
            self._rows = self._compute(t_ms)
        return self._rows.get(t_ms)

    def _compute(self, t_ms: int) -> dict[int, np.ndarray]:
        history = history_minutes(self.lags) * MINUTE_MS
        rows = self._conn.execute(
            "SELECT minute, tx_count, fee_total_sat, fee_avg_sat, revision FROM minutes"
            " WHERE minute >= ? AND minute < ? ORDER BY minute",
            (t_ms - history, t_ms + (CHUNK_MINUTES - 1) * MINUTE_MS),
        ).fetchall()
        if not rows:
            return {}
        minutes = pd.DataFrame(rows, columns=["minute", "tx_count", "fee_total_sat", "fee_avg_sat", "revision"])
        minutes["minute"] = pd.to_datetime(minutes["minute"], unit="ms", utc=True)
        minutes["event_time"] = minutes["minute"] + pd.Timedelta(minutes=1)
        minutes["fee_avg_sat"] = minutes["fee_avg_sat"].astype("float64")
        last = int(rows[-1][0]) + MINUTE_MS  # boundaries whose minutes are all closed
        first = pd.Timestamp(t_ms, unit="ms", tz="UTC")
        if last < t_ms:
            return {}
        table = features_for_range(minutes, first, pd.Timestamp(last, unit="ms", tz="UTC"), self.lags)
        values = table[self.columns].to_numpy(dtype="float64")
        stamps = table.index.asi8 // 1_000_000
        return {int(s): values[i] for i, s in enumerate(stamps)}

    def forecast_at(self, t_ms: int) -> PredictionRecord | None:
        """Forecast from the features as of t and log it; None in warm-up (no champion, no minutes)."""
        started = time.perf_counter()
        model = self.champion()
        if model is None:
            return None
        row = self.features(t_ms)
        if row is None:
            return None
        frame = pd.DataFrame(row.reshape(1, -1), columns=self.columns)
        p10, p50, p90 = (float(q) for q in model.predict(frame[list(model.feature_columns)])[0])
        target = t_ms - MINUTE_MS + self.settings.model.horizon_min * MINUTE_MS
        record = PredictionRecord(
            int(time.time() * 1000), model.version, t_ms, target, p10, p50, p90,
            (time.perf_counter() - started) * 1000, PIPELINE_KIND,
        )  # fmt: skip
        self.log.write([record], {})
        return record

    def close(self) -> None:
        self._conn.close()
        self.log.close()
