"""The fee forecaster: one LightGBM quantile model per quantile, on a level-relative target.

Why relative: the average fee wanders over orders of magnitude, and trees cannot extrapolate.
Each row's reference level is the transaction-weighted average fee of its last 15 minutes
(falling back to the 60-minute mean, then the training median); the models learn
log1p(label) - log1p(reference) from the raw features plus the fee features expressed
relative to that level. The absolute level stays a feature, so mean reversion can be learnt.
Quantiles are sorted per row, so P10 <= P50 <= P90 always holds in the output.

Saved as one LightGBM text file per quantile plus `meta.json`; loading needs only lightgbm,
and predicting one row is a few numpy operations and three raw-booster calls.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rtml.model.backtest import QUANTILES

QUANTILE_FILES = tuple(f"p{int(q * 100)}.txt" for q in QUANTILES)
META_FILE = "meta.json"
_REF = ("fee_total_sat_mean15", "tx_count_mean15", "fee_avg_sat_mean60")
RAW_COUNT_LAGS = 5
MAX_BIN = 63


@dataclass(frozen=True)
class GBMParams:
    """Shallow, strongly regularised trees: a minute's average fee is mostly noise."""

    n_estimators: int = 150
    learning_rate: float = 0.05
    num_leaves: int = 7
    min_data_in_leaf: int = 100
    feature_fraction: float = 0.8
    bagging_fraction: float = 0.8
    lambda_l2: float = 1.0
    seed: int = 7


class _Design:
    """Column positions of the derived features, computed once per column list."""

    def __init__(self, columns: list[str]) -> None:
        missing = [c for c in _REF if c not in columns]
        if missing:
            raise ValueError(f"feature columns lack {missing}, needed for the reference level")
        pos = {c: i for i, c in enumerate(columns)}
        # Raw inputs: everything but the long lag lists, which enter relative to the level
        # (fee averages) or not at all (totals = average x count); a few count lags stay.
        self.raw = [
            i
            for i, c in enumerate(columns)
            if not c.startswith(("fee_avg_sat_lag", "fee_total_sat_lag", "tx_count_lag"))
            or c in {f"tx_count_lag{k}" for k in range(1, RAW_COUNT_LAGS + 1)}
        ]
        self.total15, self.count15, self.mean60 = (pos[c] for c in _REF)
        self.lags = [pos[c] for c in columns if c.startswith("fee_avg_sat_lag")]
        self.relative = self.lags + [pos[c] for c in columns if c.startswith("fee_avg_sat_mean")]
        self.scaled = [
            pos[c]
            for c in columns
            if c.startswith(("fee_avg_sat_std", "fee_avg_sat_spread")) or c == "fee_avg_sat_diff1"
        ]
        self.names = (
            [columns[i] for i in self.raw]
            + ["log_ref"]
            + [f"rel_{columns[i]}" for i in self.relative]
            + [f"scaled_{columns[i]}" for i in self.scaled]
            + ["rel_lag_median", "rel_lag_geomean"]
        )

    def reference(self, x: np.ndarray, fallback: float) -> np.ndarray:
        count = x[:, self.count15]
        with np.errstate(divide="ignore", invalid="ignore"):
            ref = np.where(count > 0, x[:, self.total15] / count, np.nan)
        ref = np.where(np.isfinite(ref), ref, x[:, self.mean60])
        return np.where(np.isfinite(ref), ref, fallback)

    def matrix(self, x: np.ndarray, ref: np.ndarray) -> np.ndarray:
        log_ref = np.log1p(ref)[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.log1p(x[:, self.relative]) - log_ref
            scaled = x[:, self.scaled] / np.maximum(ref, 1.0)[:, None]
            # Robust levels: single huge-fee transactions dominate a minute's average, not these.
            log_lags = np.sort(np.log1p(x[:, self.lags]), axis=1)  # NaN sorts last
            k = (~np.isnan(log_lags)).sum(axis=1)
            lo = np.take_along_axis(log_lags, np.maximum(k - 1, 0)[:, None] // 2, axis=1)[:, 0]
            hi = np.take_along_axis(log_lags, (k // 2)[:, None], axis=1)[:, 0] if log_lags.shape[1] else lo
            median = np.where(k > 0, (lo + hi) / 2, np.nan)
            mean = np.where(k > 0, np.where(np.isnan(log_lags), 0.0, log_lags).sum(axis=1) / k, np.nan)
        return np.concatenate(
            [x[:, self.raw], log_ref, rel, scaled, median[:, None] - log_ref, mean[:, None] - log_ref], axis=1
        )


class QuantileGBM:
    """P10/P50/P90 of `label` from the feature columns; `fit` on a training frame, `predict` on any."""

    name = "lightgbm"

    def __init__(self, feature_columns: list[str], params: GBMParams | None = None, n_jobs: int = 1) -> None:
        self.feature_columns = list(feature_columns)
        self.params = params or GBMParams()
        self.n_jobs = n_jobs
        self._design = _Design(self.feature_columns)
        self.boosters: list[Any] = []
        self.fallback = float("nan")

    def _lgb_params(self, alpha: float) -> dict[str, Any]:
        p = self.params
        return {
            "objective": "quantile",
            "alpha": alpha,
            "learning_rate": p.learning_rate,
            "num_leaves": p.num_leaves,
            "min_data_in_leaf": p.min_data_in_leaf,
            "feature_fraction": p.feature_fraction,
            "bagging_fraction": p.bagging_fraction,
            "bagging_freq": 1,
            "lambda_l2": p.lambda_l2,
            "seed": p.seed,
            "num_threads": self.n_jobs,
            "verbose": -1,
        }

    def fit(self, frame: pd.DataFrame) -> QuantileGBM:
        import lightgbm as lgb

        x = frame[self.feature_columns].to_numpy(dtype="float64")
        y = frame["label"].to_numpy(dtype="float64")
        self.fallback = float(np.median(y))
        ref = self._design.reference(x, self.fallback)
        target = np.log1p(y) - np.log1p(ref)
        # One binned dataset serves the three quantile objectives.
        data = lgb.Dataset(
            self._design.matrix(x, ref),
            label=target,
            feature_name=self._design.names,
            params={"verbose": -1, "num_threads": self.n_jobs, "max_bin": MAX_BIN},
            free_raw_data=False,
        )
        self.boosters = [
            lgb.train(self._lgb_params(q), data, num_boost_round=self.params.n_estimators) for q in QUANTILES
        ]
        return self

    def predict_array(self, x: np.ndarray, num_threads: int | None = None) -> np.ndarray:
        """(n, 3) sorted quantiles from a float matrix whose columns are `feature_columns`."""
        ref = self._design.reference(x, self.fallback)
        design = self._design.matrix(x, ref)
        threads = self.n_jobs if num_threads is None else num_threads
        z = np.column_stack([b.predict(design, num_threads=threads) for b in self.boosters])
        z.sort(axis=1)
        return np.maximum(np.expm1(np.log1p(ref)[:, None] + z), 0.0)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return self.predict_array(frame[self.feature_columns].to_numpy(dtype="float64"))

    def save(self, directory: Path) -> list[Path]:
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        for booster, filename in zip(self.boosters, QUANTILE_FILES, strict=True):
            booster.save_model(str(directory / filename))
            paths.append(directory / filename)
        meta = {
            "feature_columns": self.feature_columns,
            "quantiles": list(QUANTILES),
            "fallback": self.fallback,
            "params": asdict(self.params),
        }
        (directory / META_FILE).write_text(json.dumps(meta, indent=1))
        return [*paths, directory / META_FILE]

    @classmethod
    def load(cls, directory: Path, n_jobs: int = 1) -> QuantileGBM:
        import lightgbm as lgb

        meta = json.loads((directory / META_FILE).read_text())
        model = cls(meta["feature_columns"], GBMParams(**meta["params"]), n_jobs=n_jobs)
        model.fallback = float(meta["fallback"])
        model.boosters = [lgb.Booster(model_file=str(directory / f)) for f in QUANTILE_FILES]
        return model
