"""Drift detection (the DataBrew stage): Evidently's data-drift preset on the per-minute features
and on per-transaction fee and size samples, with one verdict per column and one overall.

Why the default statistic is not Evidently's automatic choice: Evidently picks a K-S p-value up
to 1,000 reference rows and a Wasserstein distance normed by the reference standard deviation
above. Both judge *any* two stretches of a time series as different: fee and count series are
strongly autocorrelated, so on the real 2024 block data two halves of one calm week give K-S
p-values near 1e-100 and normed distances above 1 (tests/integration/test_drift_real.py).
The question the pipeline asks is "did the fee regime move?", so the default statistic is
`log_wasserstein`: the Wasserstein distance between ln(max(x, 1)) of both samples, i.e. the
average factor by which the distribution moved (floored at 1, the smallest fee, fee rate or
count that means anything). Its default threshold ln 1.5 flags a column whose distribution
moved by half again. On the real data the fee columns of calm halves stay under 0.35 and the
October 2024 spike is at 1.0-1.6; only the mempool backlog (`tx_count`) of one calm week
moves by x1.55, one column of five, below the default share. On the demo's synthetic data an
hour against a day moves by up to x1.5 in calm (the generator's fee level wanders) and by
x1.6-x6 after the x3.1 regime shift; the overall verdict needs half the columns.
Any Evidently method name (`ks`, `wasserstein`, `psi`, ...) or None (automatic) can be chosen.
"""

from __future__ import annotations

import math
import os
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from rtml.config import Settings
from rtml.quality.results import ColumnDrift, DriftResult, TimeRange

if TYPE_CHECKING:
    import pandas as pd

FEATURE_COLUMNS = ("tx_count", "fee_avg_sat", "fee_total_sat")
TX_COLUMNS = ("fee_sat", "size", "fee_rate")
LOG_WASSERSTEIN = "log_wasserstein"
DEFAULT_THRESHOLD = math.log(1.5)
# Per-transaction samples are capped: the statistic is stable well before, and the run stays fast.
TX_SAMPLE = 5_000
TX_SLICES, TX_SLICE = 6, timedelta(hours=1)
DEFAULT_CURRENT = timedelta(hours=1)
DEFAULT_REFERENCE = timedelta(days=1)

_registered = False


def _log_wasserstein(
    reference: pd.Series, current: pd.Series, feature_type: Any, threshold: float
) -> tuple[float, bool]:
    import numpy as np
    from scipy import stats

    ref = np.log(np.maximum(reference.to_numpy(dtype=float), 1.0))
    cur = np.log(np.maximum(current.to_numpy(dtype=float), 1.0))
    value = float(stats.wasserstein_distance(ref, cur))
    return value, value >= threshold


def import_evidently() -> None:
    """Import Evidently (about 4 s) without telemetry, and register `log_wasserstein` once."""
    global _registered
    os.environ.setdefault("DO_NOT_TRACK", "1")
    if _registered:
        return
    from evidently.legacy.calculations.stattests.registry import StatTest, register_stattest
    from evidently.legacy.core import ColumnType

    register_stattest(
        StatTest(
            name=LOG_WASSERSTEIN,
            display_name="Wasserstein distance of ln(max(x, 1))",
            allowed_feature_types=[ColumnType.Numerical],
            default_threshold=DEFAULT_THRESHOLD,
        ),
        _log_wasserstein,
    )
    _registered = True


def minute_frame(minutes: pd.DataFrame, columns: tuple[str, ...] | list[str]) -> pd.DataFrame:
    """The drift input from a minutes frame: latest revision per minute, numeric columns only."""
    frame = minutes
    if "minute" in frame.columns and "revision" in frame.columns:
        frame = frame.sort_values(["minute", "revision"]).drop_duplicates("minute", keep="last")
    return frame[list(columns)].astype(float).reset_index(drop=True)


def tx_frame(events: pd.DataFrame, sample: int = TX_SAMPLE, seed: int = 0) -> pd.DataFrame:
    """Per-transaction drift input: fee (sat), size (bytes) and fee rate (sat/byte), sampled."""
    import pandas as pd

    frame = pd.DataFrame(
        {
            "fee_sat": events["fee_sat"].astype(float),
            "size": events["size"].astype(float),
        }
    )
    frame["fee_rate"] = frame["fee_sat"] / frame["size"].where(frame["size"] > 0)
    if len(frame) > sample:
        frame = frame.sample(n=sample, random_state=seed)
    return frame.reset_index(drop=True)


def _evidently_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    dataset: str,
    method: str | None,
    threshold: float | None,
    drift_share: float,
) -> tuple[list[ColumnDrift], Any]:
    """One Evidently report over the columns of two frames; verdicts from its own tests."""
    columns = [c for c in reference.columns if reference[c].notna().any() and current[c].notna().any()]
    if not columns:
        raise ValueError(f"no {dataset} column has values in both periods")
    import_evidently()
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(numerical_columns=columns)
    ref = Dataset.from_pandas(reference[columns], data_definition=definition)
    cur = Dataset.from_pandas(current[columns], data_definition=definition)
    preset = DataDriftPreset(columns=columns, drift_share=drift_share, method=method, threshold=threshold)
    snapshot = Report([preset], include_tests=True).run(current_data=cur, reference_data=ref)
    data = snapshot.dict()
    failed = {
        t["metric_config"]["metric_id"]: t["status"] != "SUCCESS"
        for t in data.get("tests", [])
        if t.get("id") == "drift"
    }
    results = []
    for metric in data["metrics"]:
        config = metric["config"]
        if not config["type"].endswith("ValueDrift"):
            continue
        column = config["column"]
        results.append(
            ColumnDrift(
                column=column if dataset == "minutes" else f"tx.{column}",
                dataset=dataset,
                method=str(config.get("method")),
                statistic=float(metric["value"]),
                threshold=float(config.get("threshold")),
                drifted=failed[metric["id"]],
                reference_rows=int(reference[column].notna().sum()),
                current_rows=int(current[column].notna().sum()),
            )
        )
    return results, snapshot


def drift_report(
    reference_minutes: pd.DataFrame,
    current_minutes: pd.DataFrame,
    reference_tx: pd.DataFrame | None = None,
    current_tx: pd.DataFrame | None = None,
    *,
    columns: tuple[str, ...] | list[str] = FEATURE_COLUMNS,
    method: str | None = LOG_WASSERSTEIN,
    threshold: float | None = None,
    drift_share: float = 0.5,
    tx_sample: int = TX_SAMPLE,
) -> DriftResult:
    """Compare two periods column by column; no I/O, so it runs on any frames.

    `reference_minutes`/`current_minutes` need `columns` (per-minute features by default, any
    numeric columns otherwise); `reference_tx`/`current_tx`, when both are given and non-empty,
    need `fee_sat` and `size` and add the columns `tx.fee_sat`, `tx.size`, `tx.fee_rate`.
    """
    ref, cur = minute_frame(reference_minutes, columns), minute_frame(current_minutes, columns)
    if ref.empty or cur.empty:
        raise ValueError(f"drift needs rows in both periods (reference {len(ref)}, current {len(cur)})")
    found, snapshot = _evidently_drift(ref, cur, "minutes", method, threshold, drift_share)
    result = DriftResult(columns=found, drift_share=drift_share, snapshots={"minutes": snapshot})
    if reference_tx is not None and current_tx is not None and len(reference_tx) and len(current_tx):
        tx_found, tx_snapshot = _evidently_drift(
            tx_frame(reference_tx, tx_sample), tx_frame(current_tx, tx_sample, seed=1),
            "transactions", method, threshold, drift_share,
        )  # fmt: skip
        result.columns += tx_found
        result.snapshots["transactions"] = tx_snapshot
    return result


# ---------------------------------------------------------------- wiring to the pipeline's data


def load_minutes(settings: Settings, window: TimeRange) -> pd.DataFrame | None:
    """Per-minute features in [start, end) from the feature store (or the aggregation sink)."""
    from rtml.quality import sources

    return sources.read_minutes(settings, window.start, window.end)


def load_tx(settings: Settings, window: TimeRange) -> pd.DataFrame | None:
    """Archived transactions of the window; a long window is read as TX_SLICES evenly spread hours
    (a month of transactions is millions of rows, and the sample keeps only TX_SAMPLE of them)."""
    import pandas as pd

    from rtml.quality import sources

    span = window.end - window.start
    if span <= TX_SLICES * TX_SLICE:
        return sources.read_tx(settings, window.start, window.end)
    step = (span - TX_SLICE) / (TX_SLICES - 1)
    starts = [window.start + i * step for i in range(TX_SLICES)]
    parts = [sources.read_tx(settings, s, s + TX_SLICE) for s in starts]
    found = [p for p in parts if p is not None]
    return pd.concat(found, ignore_index=True) if found else None


def default_windows(
    settings: Settings, span: tuple[datetime, datetime] | None
) -> tuple[TimeRange | None, TimeRange | None]:
    """Reference = the champion's training window, else the first day of data; current = last hour.

    `span` is (start of the first minute, end of the newest) of the data there is.
    """
    from rtml.quality import sources

    if span is None:
        return None, None
    first, last = span
    current = TimeRange(last - DEFAULT_CURRENT, last)
    reference = sources.champion_training_window(settings)
    if reference is None:
        reference = TimeRange(first, min(first + DEFAULT_REFERENCE, current.start))
    return reference, current


def run_drift_check(
    settings: Settings,
    reference: TimeRange | None = None,
    current: TimeRange | None = None,
    *,
    now: datetime | None = None,
    record: bool = True,
    transactions: bool = True,
    key: str | None = None,
) -> DriftResult:
    """The hourly job: drift + rules over the windows, report files, events. Never raises on no data.

    `transactions=False` leaves out the archived transactions: the scheduler's check at clock t
    must not depend on how far the archiver got (the same verdict at any replay speed).
    `key` makes the recorded events idempotent (see `reports.record_events`).
    """
    from rtml.quality import reports, rules, sources

    # The span of the data is needed only for default windows or a check "now": a check at a
    # given time with given windows reads nothing outside them.
    span = sources.data_span(settings) if reference is None or current is None or now is None else None
    now = now or datetime.now(UTC)
    if reference is None or current is None:
        default_ref, default_cur = default_windows(settings, span)
        reference, current = reference or default_ref, current or default_cur
    result = DriftResult(
        columns=[], drift_share=settings.drift.drift_share, reference=reference, current=current
    )
    ref_minutes = load_minutes(settings, reference) if reference else None
    cur_minutes = load_minutes(settings, current) if current else None
    cur_tx = load_tx(settings, current) if current and transactions else None
    if ref_minutes is None or cur_minutes is None or ref_minutes.empty or cur_minutes.empty:
        result.skipped = "no data"
    else:
        ref_tx = load_tx(settings, reference) if reference and transactions else None
        try:
            found = drift_report(
                ref_minutes, cur_minutes, ref_tx, cur_tx, drift_share=settings.drift.drift_share
            )
            result.columns, result.snapshots = found.columns, found.snapshots
        except ValueError as exc:  # e.g. no fee in either period: a verdict is impossible, not an error
            result.skipped = str(exc)
    newest = span[1] if span else (current.end if current else None)
    result.rules = rules.run_rules(settings, cur_minutes, cur_tx, now=now, newest_end=newest)
    reports.write_report(settings, result, kind="drift", now=now)
    if record:
        reports.record_events(settings, result, drift=True, key=key)
    return result


def scheduled_windows(settings: Settings, clock: datetime, first: datetime) -> tuple[TimeRange, TimeRange]:
    """The windows of the check at clock t: the last hour before t against the champion's training
    window, or else the first day of data, both cut at the current hour (nothing at or after t)."""
    from rtml.quality import sources

    current = TimeRange(clock - DEFAULT_CURRENT, clock)
    trained = sources.champion_training_window(settings)
    if trained is not None and trained.start < current.start:
        return TimeRange(trained.start, min(trained.end, current.start)), current
    return TimeRange(first, max(first, min(first + DEFAULT_REFERENCE, current.start))), current


def run_quality_check(
    settings: Settings, current: TimeRange | None = None, *, now: datetime | None = None, record: bool = True
) -> DriftResult:
    """The rules alone over `current` (default: the last hour of data), with report and events."""
    from rtml.quality import reports, rules, sources

    now = now or datetime.now(UTC)
    span = sources.data_span(settings)
    if current is None:
        current = default_windows(settings, span)[1]
    result = DriftResult(
        columns=[], drift_share=settings.drift.drift_share, current=current, skipped="rules only"
    )
    minutes = load_minutes(settings, current) if current else None
    tx = load_tx(settings, current) if current else None
    result.rules = rules.run_rules(settings, minutes, tx, now=now, newest_end=span[1] if span else None)
    reports.write_report(settings, result, kind="quality", now=now)
    if record:
        reports.record_events(settings, result, drift=False)
    return result
