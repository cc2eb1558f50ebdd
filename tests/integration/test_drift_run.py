"""The hourly drift + quality run end to end: minutes in the feature store, report files, index,
events in the shared log, the commands. Written once, run on both profiles."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from rtml.archive import parquet_lake as lake
from rtml.config import Settings
from rtml.features import offline
from rtml.model import registry
from rtml.monitoring.events import EventLog
from rtml.quality import reports
from rtml.quality.drift import run_drift_check, run_quality_check
from rtml.quality.results import TimeRange

START = datetime(2024, 10, 1, tzinfo=UTC)
DAY = timedelta(days=1)


def store_minutes(settings: Settings, start: datetime, n: int, fee_level: float, seed: int) -> None:
    """n calm synthetic minutes from `start` at `fee_level` sat, written to the offline store."""
    rng = np.random.default_rng(seed)
    minute = pd.date_range(start, periods=n, freq="min", tz="UTC")
    tx = rng.poisson(145, n)
    avg = rng.lognormal(np.log(fee_level), 0.3, n)
    frame = pd.DataFrame(
        {
            "minute": minute,
            "tx_count": tx,
            "fee_total_sat": np.rint(avg * tx).astype("int64"),
            "fee_avg_sat": np.rint(avg * tx) / tx,
            "event_time": minute + pd.Timedelta(minutes=1),
            "revision": 0,
        }
    )
    store = offline.open_offline(settings)
    try:
        store.upsert(offline.to_source_frame(frame))
    finally:
        getattr(store, "close", lambda: None)()


def kinds(settings: Settings) -> list[str]:
    log = EventLog(settings)
    try:
        return [e.kind for e in log.recent(prefix="")]
    finally:
        log.close()


def test_without_data_the_run_is_skipped_not_crashed(backend_settings: Settings) -> None:
    result = run_drift_check(backend_settings)
    assert result.verdict == "skipped: no data" and not result.drifted
    assert {r.status for r in result.rules} <= {"skipped", "pass"}
    assert Path(result.html_path or "").exists() and Path(result.json_path or "").exists()
    assert {"drift.skipped", "quality.ok"} <= set(kinds(backend_settings))


def test_fee_regime_shift_is_caught_with_report_index_and_alert(backend_settings: Settings) -> None:
    store_minutes(backend_settings, START, 1440, 4000.0, seed=1)  # the first day: the default reference
    store_minutes(backend_settings, START + DAY, 600, 4000.0, seed=2)
    store_minutes(backend_settings, START + DAY + timedelta(minutes=600), 60, 4000.0 * 3.1, seed=3)  # last hour
    now = START + DAY + timedelta(minutes=661)
    result = run_drift_check(backend_settings, now=now)

    assert result.reference == TimeRange(START, START + DAY)
    assert result.current == TimeRange(
        START + DAY + timedelta(minutes=600), START + DAY + timedelta(minutes=660)
    )
    assert result.drifted and set(result.drifted_columns) == {"fee_avg_sat", "fee_total_sat"}
    assert result.share == pytest.approx(2 / 3)
    assert all(r.status != "fail" for r in result.rules), result.rules

    page = Path(result.html_path or "").read_text()
    assert "fee_avg_sat" in page and "drift</b>" in page
    assert '<script src="http' not in page  # self-contained: Evidently's scripts are inlined
    summary = json.loads(Path(result.json_path or "").read_text())
    assert summary["verdict"] == "drift" and len(summary["columns"]) == 3 and len(summary["rules"]) == 7
    index = reports.load_index(backend_settings)
    assert [(r["kind"], r["verdict"]) for r in index] == [("drift", "drift")]
    assert (Path(result.html_path or "").parent / index[0]["html"]).exists()

    log = EventLog(backend_settings)
    try:
        alert = log.recent(prefix="drift.alert")[-1]
    finally:
        log.close()
    assert alert.details["share"] == pytest.approx(2 / 3) and alert.details["report"] == result.html_path
    assert reports.quality_counters(backend_settings)["drift_alerts"] == 1.0


def test_same_regime_is_no_drift_and_stale_data_fails_freshness(settings: Settings) -> None:
    store_minutes(settings, START, 1440 + 120, 4000.0, seed=4)
    result = run_drift_check(settings, now=START + DAY + timedelta(hours=5))
    assert result.verdict == "no drift" and result.share == 0.0
    assert result.failed_rules == ["freshness_s"]  # the newest minute is 3 h old
    assert {"drift.ok", "quality.failed"} <= set(kinds(settings))


def test_commands_take_explicit_windows(settings: Settings) -> None:
    from rtml.cli import app

    store_minutes(settings, START, 1440, 4000.0, seed=5)
    store_minutes(settings, START + DAY, 120, 12000.0, seed=6)
    runner = CliRunner(env={"COLUMNS": "200"})
    out = runner.invoke(
        app,
        [
            "drift",
            "--reference",
            "2024-10-01T00:00..2024-10-01T12:00",
            "--current",
            "2024-10-02T01:00..2024-10-02T02:00",
        ],
    )
    assert out.exit_code == 0, out.output
    assert "drift verdict: drift" in out.output
    run = reports.load_index(settings)[-1]
    summary = json.loads((reports.reports_dir(settings) / run["json"]).read_text())
    assert summary["reference"]["end"].startswith("2024-10-01T12:00") and summary["current"][
        "start"
    ].startswith("2024-10-02T01:00")

    out = runner.invoke(app, ["quality", "--current", "2024-10-02T00:00..2024-10-02T02:00"])
    assert out.exit_code == 0, out.output
    assert "missing_minutes_share" in out.output
    assert reports.load_index(settings)[-1]["kind"] == "quality"

    bad = runner.invoke(app, ["drift", "--current", "2024-10-02"])
    assert bad.exit_code != 0 and "START..END" in bad.output


def test_quality_run_alone_judges_freshness_on_the_whole_store(settings: Settings) -> None:
    store_minutes(settings, START, 240, 4000.0, seed=7)
    now = START + timedelta(hours=4, minutes=1)
    result = run_quality_check(settings, TimeRange(START, START + timedelta(hours=2)), now=now)
    statuses = {r.name: r.status for r in result.rules}
    assert not result.columns and statuses["tx_count_in_band"] == statuses["freshness_s"] == "pass"
    assert reports.load_index(settings)[-1]["verdict"] == "pass"
    stale = run_quality_check(
        settings, TimeRange(START, START + timedelta(hours=2)), now=now + timedelta(hours=1)
    )
    assert stale.failed_rules == ["freshness_s"]
    assert reports.load_index(settings)[-1]["verdict"] == "fail"


def test_transactions_from_the_archive_join_the_verdict(settings: Settings) -> None:
    """Synthetic traffic with the x3.1 fee regime shift, through the stream into the raw archive."""
    from rtml.sources.synthetic import RegimeShift, SyntheticConfig, SyntheticSource
    from rtml.stream import open_stream

    config = SyntheticConfig(
        seed=3, start=START, minutes=420, rate_per_min=25, shift=RegimeShift(at_minute=330, ramp_minutes=10)
    )
    events = list(SyntheticSource(config).events())
    with open_stream(settings) as stream:
        stream.append(events)
    assert lake.archive_pending(settings) == len(events)
    frame = pd.DataFrame([e.to_dict() for e in events])
    frame["minute"] = pd.to_datetime(frame["event_time"] // 60_000 * 60_000, unit="ms", utc=True)
    per_minute = frame.groupby("minute").agg(tx_count=("fee_sat", "size"), fee_total_sat=("fee_sat", "sum"))
    per_minute = per_minute.reset_index().assign(
        fee_avg_sat=lambda d: d.fee_total_sat / d.tx_count,
        event_time=lambda d: d.minute + pd.Timedelta(minutes=1),
    )
    store = offline.open_offline(settings)
    store.upsert(offline.to_source_frame(per_minute.assign(revision=0)))

    result = run_drift_check(
        settings,
        TimeRange(START, START + timedelta(hours=5)),
        TimeRange(START + timedelta(hours=6), START + timedelta(hours=7)),
    )
    by_column = {c.column: c for c in result.columns}
    assert set(by_column) == {
        "tx_count",
        "fee_avg_sat",
        "fee_total_sat",
        "tx.fee_sat",
        "tx.size",
        "tx.fee_rate",
    }
    assert by_column["tx.fee_sat"].drifted and by_column["tx.fee_rate"].drifted
    assert not by_column["tx.size"].drifted and not by_column["tx_count"].drifted
    assert by_column["tx.fee_sat"].reference_rows == 5_000  # 5 h of about 25 a minute, sampled down
    assert 500 < by_column["tx.fee_sat"].current_rows < 5_000  # the whole hour
    assert result.drifted
    page = Path(result.html_path or "").read_text()
    assert page.count("<iframe") == 2  # the minutes report and the transactions report


def test_default_reference_is_the_champions_training_window(settings: Settings) -> None:
    """The registry (real MLflow, embedded) names the champion's training window: it is the reference."""
    store_minutes(settings, START, 1440 + 480, 4000.0, seed=8)
    train_start, train_end = START + timedelta(hours=6), START + timedelta(hours=18)
    client = registry.client(settings)
    client.create_registered_model(registry.MODEL_NAME)
    version = client.create_model_version(
        registry.MODEL_NAME,
        source=settings.path("mlflow", "artifacts", "none").as_uri(),
        tags={"train_start": train_start.isoformat(), "train_end": train_end.isoformat()},
    )
    client.set_registered_model_alias(registry.MODEL_NAME, registry.CHAMPION, version.version)

    result = run_drift_check(settings, now=START + DAY + timedelta(hours=8))
    assert result.reference == TimeRange(train_start, train_end)
    assert result.current == TimeRange(START + DAY + timedelta(hours=7), START + DAY + timedelta(hours=8))
    assert result.columns[0].reference_rows == 12 * 60 and result.verdict == "no drift"
