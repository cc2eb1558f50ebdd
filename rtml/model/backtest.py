"""Forecast quality and the rolling-origin backtest every candidate and baseline is judged by.

Metrics follow the AWS original (DeepAR): the weighted quantile loss
wQL = mean over q in (0.1, 0.5, 0.9) of 2 * Σ pinball_q(y, ŷ_q) / Σ |y|, plus the MAE of P50
and the share of actuals inside [P10, P90].

The backtest is rolling-origin with an expanding window and no shuffling: the last part of
the frame is cut into `folds` consecutive test blocks; each fold trains on every row whose
label was already known when its test block starts (target minute closed by the first test
as-of time, i.e. a gap of `horizon` minutes), so no fold ever sees its own future.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd

QUANTILES = (0.1, 0.5, 0.9)
MINUTE = pd.Timedelta(minutes=1)


class Forecaster(Protocol):
    """Anything the backtest can judge: fit on training rows, P10/P50/P90 for other rows."""

    name: str

    def fit(self, frame: pd.DataFrame) -> Forecaster: ...

    def predict(self, frame: pd.DataFrame) -> np.ndarray: ...


@dataclass(frozen=True)
class Metrics:
    wql: float
    mae: float
    coverage: float
    n: int

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def pinball(y: np.ndarray, pred: np.ndarray, q: float) -> np.ndarray:
    diff = y - pred
    return np.maximum(q * diff, (q - 1) * diff)


def wql(y: np.ndarray, preds: np.ndarray, quantiles: Sequence[float] = QUANTILES) -> float:
    """Weighted quantile loss averaged over quantiles; `preds` has one column per quantile."""
    y = np.asarray(y, dtype="float64")
    denom = np.abs(y).sum()
    if denom == 0:
        return float("nan")
    return float(np.mean([2 * pinball(y, preds[:, i], q).sum() / denom for i, q in enumerate(quantiles)]))


def evaluate(y: np.ndarray, preds: np.ndarray) -> Metrics:
    """wQL, MAE of P50 and P10–P90 coverage of one forecaster on one set of rows."""
    y = np.asarray(y, dtype="float64")
    preds = np.asarray(preds, dtype="float64")
    if len(y) == 0:
        return Metrics(float("nan"), float("nan"), float("nan"), 0)
    return Metrics(
        wql=wql(y, preds),
        mae=float(np.abs(y - preds[:, 1]).mean()),
        coverage=float(((y >= preds[:, 0]) & (y <= preds[:, 2])).mean()),
        n=len(y),
    )


@dataclass(frozen=True)
class Fold:
    index: int
    train_rows: int
    test_start: pd.Timestamp  # first as-of time of the test block
    test_end: pd.Timestamp  # last as-of time of the test block
    train_mask: np.ndarray = field(repr=False, compare=False)
    test_mask: np.ndarray = field(repr=False, compare=False)


def rolling_origin(frame: pd.DataFrame, folds: int, test_fraction: float = 0.3) -> list[Fold]:
    """Expanding-window folds over the last `test_fraction` of the rows, in time order.

    A training row is usable for a fold only if its label was known at the fold's first
    as-of time: `target_minute + 1 min <= test_start` (the horizon gap).
    """
    if folds < 1:
        raise ValueError("folds must be at least 1")
    n = len(frame)
    asof = pd.DatetimeIndex(frame["asof"])
    asof_ns = asof.asi8
    if not asof.is_monotonic_increasing:
        raise ValueError("the frame must be sorted by asof (no shuffling in a backtest)")
    test_rows = int(n * test_fraction)
    block = test_rows // folds
    if block < 1:
        raise ValueError(f"{n} rows are too few for {folds} folds")
    known_at = (pd.DatetimeIndex(frame["target_minute"]) + MINUTE).asi8
    first_test = n - block * folds
    out = []
    for k in range(folds):
        lo, hi = first_test + k * block, first_test + (k + 1) * block
        test_mask = np.zeros(n, dtype=bool)
        test_mask[lo:hi] = True
        train_mask = known_at <= asof_ns[lo]
        train_mask[lo:] = False
        if train_mask.sum() < 2 * block:
            raise ValueError(f"fold {k} would train on {int(train_mask.sum())} rows only; need more history")
        out.append(Fold(k, int(train_mask.sum()), asof[lo], asof[hi - 1], train_mask, test_mask))
    return out


@dataclass
class BacktestResult:
    """Per-fold and pooled metrics of each forecaster, and every test prediction."""

    folds: list[Fold]
    fold_metrics: dict[str, list[Metrics]]
    summary: dict[str, Metrics]
    predictions: pd.DataFrame  # asof, target_minute, fold, label, <name>_p10/_p50/_p90 per forecaster
    skipped: dict[str, str] = field(default_factory=dict)  # forecaster name -> why it was not judged

    def preds(self, name: str, mask: np.ndarray | None = None) -> np.ndarray:
        cols = [f"{name}_p10", f"{name}_p50", f"{name}_p90"]
        df = self.predictions if mask is None else self.predictions.loc[mask]
        return df[cols].to_numpy()


def backtest(
    frame: pd.DataFrame,
    forecasters: Sequence[Callable[[], Forecaster]],
    folds: int,
    test_fraction: float = 0.3,
    on_fold: Callable[[int], None] | None = None,
) -> BacktestResult:
    """Fit a fresh instance of every forecaster per fold and judge it on that fold's block.

    A forecaster whose `predict` returns NaN for some test row (a baseline the data does not
    cover, e.g. "same minute yesterday" on less than a day) is skipped, with the reason.
    """
    splits = rolling_origin(frame, folds, test_fraction)
    test_any = np.zeros(len(frame), dtype=bool)
    for f in splits:
        test_any |= f.test_mask
    predictions = frame.loc[test_any, ["asof", "target_minute", "label"]].copy()
    predictions["fold"] = -1
    columns: dict[str, np.ndarray] = {}
    names: list[str] = []
    skipped: dict[str, str] = {}
    for factory in forecasters:
        name = factory().name
        names.append(name)
        columns[name] = np.full((len(predictions), len(QUANTILES)), np.nan)
    for f in splits:
        rows = f.test_mask[test_any]
        predictions.loc[rows, "fold"] = f.index
        train, test = frame.loc[f.train_mask], frame.loc[f.test_mask]
        for factory, name in zip(forecasters, names, strict=True):
            if name in skipped:
                continue
            preds = factory().fit(train).predict(test)
            if np.isnan(preds).any():
                skipped[name] = f"no forecast for some rows of fold {f.index} (data does not cover it)"
                continue
            columns[name][rows] = preds
        if on_fold:
            on_fold(f.index)
    y = predictions["label"].to_numpy()
    fold_of = predictions["fold"].to_numpy()
    fold_metrics: dict[str, list[Metrics]] = {}
    summary: dict[str, Metrics] = {}
    for name in names:
        if name in skipped:
            continue
        p = columns[name]
        for i, q in enumerate(("p10", "p50", "p90")):
            predictions[f"{name}_{q}"] = p[:, i]
        fold_metrics[name] = [evaluate(y[fold_of == f.index], p[fold_of == f.index]) for f in splits]
        summary[name] = evaluate(y, p)
    return BacktestResult(splits, fold_metrics, summary, predictions.reset_index(drop=True), skipped)
