"""`rtml train`: training set through the ETL -> rolling-origin backtest against the baselines ->
final fit -> promotion gate -> MLflow run, registered version, and (maybe) the champion alias.

Every candidate is registered (so a person can still `rtml model promote` it), tagged with its
training window and the gate's decision; only the gate, or a person, moves `champion`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from rtml.aggregate.clock import current_boundary
from rtml.config import Settings
from rtml.model.backtest import BacktestResult, backtest, wql
from rtml.model.baselines import PointBaseline, baseline_factories, servable_factories
from rtml.model.gate import ChampionComparison, GateDecision, decide
from rtml.model.gbm import GBMParams, QuantileGBM

if TYPE_CHECKING:
    from rich.console import Console



@dataclass
class TrainResult:
    version: str
    run_id: str
    promoted: bool
    decision: GateDecision
    backtest: BacktestResult
    train_start: pd.Timestamp
    train_end: pd.Timestamp
    rows: int
    seconds: float

    def line(self) -> str:
        """One human line: wQL against the best baseline and what the gate did."""
        d = self.decision
        verdict = "promoted to champion" if self.promoted else "rejected by the gate"
        return (
            f"v{self.version}: wQL {d.candidate_wql:.4f} vs {d.best_baseline} {d.best_baseline_wql:.4f} "
            f"({d.gain_vs_baseline:+.1%}), {verdict}"
        )


def training_window(frame: pd.DataFrame) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The minutes a model learnt from: the first row's last closed minute .. the end of the last
    label minute (what drift checks take as the champion's reference period)."""
    return (
        pd.Timestamp(frame["asof"].min()) - pd.Timedelta(minutes=1),
        pd.Timestamp(frame["target_minute"].max()) + pd.Timedelta(minutes=1),
    )


def etl_frame(
    settings: Settings, start: datetime | None, end: datetime | None
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The training set through the ETL (Feast point-in-time retrieval -> feature rows) and its card.

    Rows have as-of times from `start` (default: the store's first minute) and use no minute at
    or after `end` (default: the store's newest minute is the last label).
    """
    from rtml.features.etl import build_dataset
    from rtml.features.offline import read_minutes_df

    stored = read_minutes_df(settings, start, end)
    if stored.empty:
        raise ValueError("the feature store has no minutes in the requested window; nothing to train on")
    horizon = pd.Timedelta(minutes=settings.model.horizon_min)
    first = pd.Timestamp(start) if start is not None else stored["minute"].iloc[0] + pd.Timedelta(minutes=1)
    last_label_end = (
        pd.Timestamp(end) if end is not None else stored["minute"].iloc[-1] + pd.Timedelta(minutes=1)
    )
    card = build_dataset(settings, first, last_label_end - horizon)
    return pd.read_parquet(card["path"]), card


def compare_with_champion(
    settings: Settings, frame: pd.DataFrame, result: BacktestResult, name: str
) -> ChampionComparison | None:
    """The champion and the candidate on the same recent folds: those after the champion's training
    window when there are any (out of sample for both), otherwise all folds (noted)."""
    from rtml.model.registry import champion_version_strict, load_version

    version = champion_version_strict(settings)
    if version is None:
        return None
    champ = load_version(settings, version)
    missing = [c for c in champ.feature_columns if c not in frame.columns]
    if missing:
        return ChampionComparison(
            version, float("inf"), float("nan"), [], f"champion needs absent features {missing[:3]}"
        )
    folds = [
        f for f in result.folds if champ.train_end is None or f.test_start >= pd.Timestamp(champ.train_end)
    ]
    note = ""
    if not folds:
        folds = list(result.folds)
        note = "champion was trained on data overlapping these folds"
    fold_ids = [f.index for f in folds]
    rows = result.predictions["fold"].isin(fold_ids).to_numpy()
    pred_rows = result.predictions.loc[rows]
    features = frame.set_index("asof").loc[pd.DatetimeIndex(pred_rows["asof"])].reset_index()
    y = pred_rows["label"].to_numpy()
    return ChampionComparison(
        version,
        champion_wql=wql(y, champ.predict(features)),
        candidate_wql=wql(y, result.preds(name, rows)),
        folds=fold_ids,
        note=note,
    )


def backtest_plot(result: BacktestResult, name: str, baseline: str, path: Path) -> Path:
    """Actuals, the model's P10–P90 band and P50, the best baseline's P50; folds shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = result.predictions
    t = pd.DatetimeIndex(p["target_minute"])
    fig, ax = plt.subplots(figsize=(12, 4.5), dpi=100)
    for f in result.folds[::2]:
        ax.axvspan(f.test_start, f.test_end, color="0.93", lw=0)
    ax.fill_between(
        t, p[f"{name}_p10"], p[f"{name}_p90"], color="tab:blue", alpha=0.25, lw=0, label="model P10–P90"
    )
    ax.plot(t, p["label"], color="black", lw=0.6, label="actual fee_avg_sat")
    ax.plot(t, p[f"{name}_p50"], color="tab:blue", lw=1, label="model P50")
    ax.plot(t, p[f"{baseline}_p50"], color="tab:orange", lw=0.8, ls="--", label=f"{baseline} P50")
    ax.set_yscale("log")
    ax.set_ylabel("average fee (sat), log scale")
    ax.set_title(f"Rolling-origin backtest, {len(result.folds)} folds (shaded: every other fold)")
    ax.legend(loc="upper left", fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def train(
    settings: Settings,
    start: datetime | None = None,
    end: datetime | None = None,
    *,
    minutes: pd.DataFrame | None = None,
    params: GBMParams | None = None,
    test_fraction: float = 0.3,
    console: Console | None = None,
) -> TrainResult:
    """Train, backtest, gate and register one candidate.

    The training set comes through the ETL from the feature store (`start`/`end`, see `etl_frame`);
    `minutes` (a MinuteFeatures frame) bypasses the store, for tests and benchmarks.
    """
    import tempfile

    import mlflow

    from rtml.features.dataset import build_training_frame, feature_columns
    from rtml.model import registry
    from rtml.monitoring.events import EventLog

    t0 = time.monotonic()
    cfg = settings.model
    lags = settings.features.lags
    card: dict[str, Any] | None = None
    if minutes is None:
        frame, card = etl_frame(settings, start, end)
    else:
        frame = build_training_frame(minutes, horizon=cfg.horizon_min, lags=lags)
    if frame.empty:
        raise ValueError("the training set is empty (no minute with a label in the window)")
    columns = feature_columns(lags)
    params = params or GBMParams(seed=settings.seed)
    make_model: Callable[[], QuantileGBM] = lambda: QuantileGBM(columns, params, n_jobs=cfg.n_jobs)  # noqa: E731
    with _progress(console, "backtest folds", cfg.folds) as advance:
        result = backtest(frame, [*baseline_factories(frame), make_model], cfg.folds, test_fraction, advance)
    model = make_model().fit(frame)
    name = QuantileGBM.name
    baselines = {k: m.wql for k, m in result.summary.items() if k != name}
    comparison = compare_with_champion(settings, frame, result, name)
    decision = decide(result.summary[name].wql, baselines, cfg.min_gain_vs_baseline, comparison)
    train_start, train_end = training_window(frame)

    registry.quiet_mlflow()
    mlflow.set_tracking_uri(registry.tracking_uri(settings))
    mlflow.set_registry_uri(registry.tracking_uri(settings))
    gate = "promoted" if decision.promote else "rejected"
    version_tags = {
        "train_start": train_start.isoformat(),
        "train_end": train_end.isoformat(),
        "rows": str(len(frame)),
        "horizon_min": str(cfg.horizon_min),
        "gate": gate,
        "gate_reasons": " | ".join(decision.reasons),
    }
    with mlflow.start_run(experiment_id=registry.experiment_id(settings)) as run:
        mlflow.log_params(
            {
                "horizon_min": cfg.horizon_min,
                "lags": lags,
                "folds": cfg.folds,
                "test_fraction": test_fraction,
                "n_jobs": cfg.n_jobs,
                "rows": len(frame),
                "features": len(columns),
                "train_start": train_start.isoformat(),
                "train_end": train_end.isoformat(),
                **{f"gbm.{k}": v for k, v in vars(params).items()},
            }
        )
        mlflow.log_metrics(_metrics(result, decision, name))
        for f, m in enumerate(result.fold_metrics[name]):
            mlflow.log_metric("fold_wql", m.wql, step=f)
        mlflow.set_tags(
            {f"gate.{k}": v for k, v in (("decision", gate), ("reasons", version_tags["gate_reasons"]))}
        )
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.log_artifact(
                str(backtest_plot(result, name, decision.best_baseline, Path(tmp) / "backtest.png"))
            )
            result.predictions.to_csv(Path(tmp) / "backtest_predictions.csv", index=False)
            mlflow.log_artifact(str(Path(tmp) / "backtest_predictions.csv"))
        if card is not None:
            mlflow.log_dict(card, "dataset_card.json")
            mlflow.set_tag("dataset", card["path"])
    version = registry.log_candidate(settings, model, frame.tail(200), run.info.run_id, version_tags)
    log = EventLog(settings)
    try:
        # keyed within a scheduled job: its retry after an outage records the decision once
        key = None if (b := current_boundary.get()) is None else f"v{version}@{b}"
        log.record("model.gate", key=key and f"model.gate:{key}", version=version, run_id=run.info.run_id,
                   **decision.to_dict())  # fmt: skip
        if not decision.promote:
            log.record("model.rejected", key=key and f"model.rejected:{key}", version=version, reasons=decision.reasons)
    finally:
        log.close()
    if decision.promote:
        registry.promote(settings, version, reason="gate: " + decision.reasons[0])
    return TrainResult(
        version,
        run.info.run_id,
        decision.promote,
        decision,
        result,
        train_start,
        train_end,
        len(frame),
        time.monotonic() - t0,
    )


def train_and_gate(
    settings: Settings, start: datetime | None = None, end: datetime | None = None
) -> dict[str, Any]:
    """`train` on the feature store's minutes, summarised for event logs and retraining loops."""
    result = train(settings, start, end)
    return {
        "version": result.version,
        "run_id": result.run_id,
        "promoted": result.promoted,
        "wql": result.decision.candidate_wql,
        "best_baseline": result.decision.best_baseline,
        "best_baseline_wql": result.decision.best_baseline_wql,
        "reasons": result.decision.reasons,
        "train_start": result.train_start.isoformat(),
        "train_end": result.train_end.isoformat(),
        "rows": result.rows,
        "seconds": round(result.seconds, 2),
    }


def bootstrap_champion(settings: Settings, end: datetime, console: Console | None = None) -> dict[str, Any] | None:
    """Register the best calibrated baseline on the minutes before `end` and make it champion.

    A pipeline is never without a champion: until a model earns its place through the gate,
    the best baseline of the backtest serves and is judged. Returns None (nothing registered)
    while the store holds fewer than `model.min_baseline_minutes` minutes before `end`, or when
    a champion already exists (only the gate moves it then). A crash after the registration
    but before the promotion leaves a baseline version that the next call promotes.
    """
    import mlflow

    from rtml.features.offline import read_minutes_df
    from rtml.model import registry
    from rtml.monitoring.events import EventLog

    if registry.champion_version_strict(settings) is not None:
        return None
    t0 = time.monotonic()
    if len(read_minutes_df(settings, None, end)) < settings.model.min_baseline_minutes:
        return None
    cfg = settings.model
    frame, card = etl_frame(settings, None, end)
    with _progress(console, "baseline folds", cfg.folds) as advance:
        result = backtest(frame, servable_factories(), cfg.folds, 0.3, advance)
    best = min(result.summary, key=lambda k: result.summary[k].wql)
    model = next(f() for f in servable_factories() if f().name == best).fit(frame)
    assert isinstance(model, PointBaseline)
    train_start, train_end = training_window(frame)
    tags = {
        "baseline": best,
        "train_start": train_start.isoformat(),
        "train_end": train_end.isoformat(),
        "rows": str(len(frame)),
        "horizon_min": str(cfg.horizon_min),
        "gate": "bootstrap",
        "gate_reasons": f"no champion: best calibrated baseline {best} of {sorted(result.summary)}",
    }
    registry.quiet_mlflow()
    mlflow.set_tracking_uri(registry.tracking_uri(settings))
    with mlflow.start_run(experiment_id=registry.experiment_id(settings), run_name=f"baseline-{best}") as run:
        mlflow.log_params({"baseline": best, "rows": len(frame), "folds": cfg.folds, **tags})
        metrics = {k: v for k, v in result.summary[best].to_dict().items() if k != "n"}
        metrics.update({f"baseline.{n}.wql": m.wql for n, m in result.summary.items()})
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if np.isfinite(v)})
        mlflow.log_dict(card, "dataset_card.json")
    version = registry.log_candidate(settings, model, frame.tail(200), run.info.run_id, tags)
    log = EventLog(settings)
    try:
        key = None if (b := current_boundary.get()) is None else f"model.baseline:v{version}@{b}"  # once per boundary
        log.record("model.baseline", key=key, version=version, baseline=best, wql=result.summary[best].wql, rows=len(frame))
    finally:
        log.close()
    registry.promote(settings, version, reason=f"bootstrap: best calibrated baseline {best}")
    return {
        "version": version,
        "kind": "baseline",
        "baseline": best,
        "promoted": True,
        "wql": result.summary[best].wql,
        "train_start": train_start.isoformat(),
        "train_end": train_end.isoformat(),
        "rows": len(frame),
        "seconds": round(time.monotonic() - t0, 2),
    }


def _metrics(result: BacktestResult, decision: GateDecision, name: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for forecaster, m in result.summary.items():
        prefix = "" if forecaster == name else f"baseline.{forecaster}."
        out.update({f"{prefix}{k}": v for k, v in m.to_dict().items() if k != "n"})
    out["best_baseline_wql"] = decision.best_baseline_wql
    out["gain_vs_baseline"] = decision.gain_vs_baseline
    if decision.champion is not None and np.isfinite(decision.champion.champion_wql):
        out["champion_wql_same_folds"] = decision.champion.champion_wql
        out["candidate_wql_same_folds"] = decision.champion.candidate_wql
    return {k: float(v) for k, v in out.items() if np.isfinite(v)}


class _progress:
    """A rich progress bar over backtest folds (silent without a console)."""

    def __init__(self, console: Console | None, description: str, total: int) -> None:
        self.console, self.description, self.total = console, description, total
        self._progress: Any = None

    def __enter__(self) -> Callable[[int], None]:
        if self.console is None:
            return lambda _: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("  {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self._progress.start()
        task = self._progress.add_task(self.description, total=self.total)
        return lambda _: self._progress.advance(task)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
