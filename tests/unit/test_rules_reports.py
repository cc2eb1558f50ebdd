"""Report files, the index by time, its pruning, the counters and events, without Evidently."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from rtml.config import Settings
from rtml.monitoring.events import EventLog
from rtml.quality import reports
from rtml.quality.drift import drift_report
from rtml.quality.results import ColumnDrift, DriftResult, TimeRange
from rtml.quality.rules import dead_letter_rate, fees_valid

T0 = datetime(2024, 10, 1, tzinfo=UTC)


def result(drifted: bool, dead_letters: int = 0) -> DriftResult:
    column = ColumnDrift(
        "fee_avg_sat", "minutes", "log_wasserstein", 1.1 if drifted else 0.1, 0.405, drifted, 1440, 60
    )
    found = DriftResult(
        [column],
        0.5,
        TimeRange(T0, T0 + timedelta(days=1)),
        TimeRange(T0 + timedelta(days=2), T0 + timedelta(days=2, hours=1)),
    )
    found.rules = [fees_valid(0, 0), dead_letter_rate(dead_letters, 1000)]
    return found


def test_runs_are_indexed_by_time_and_old_pages_pruned(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reports, "KEEP_HTML", 2)
    written = []
    for i, drifted in enumerate((False, True, False)):
        run = result(drifted, dead_letters=50 * (i == 2))
        reports.write_report(settings, run, kind="drift", now=T0 + timedelta(hours=i))
        written.append(run)
    index = reports.load_index(settings)
    assert [r["time"] for r in index] == [(T0 + timedelta(hours=i)).isoformat() for i in range(3)]
    assert [r["verdict"] for r in index] == ["no drift", "drift", "no drift"]
    assert index[2]["failed_rules"] == ["dead_letter_rate"]
    assert index[0]["html"] is None and not Path(written[0].html_path or "").exists()  # pruned page
    assert Path(written[0].json_path or "").exists()  # summaries are kept
    assert all((reports.reports_dir(settings) / r["html"]).exists() for r in index[1:])
    summary = json.loads(Path(written[1].json_path or "").read_text())
    assert summary["columns"][0]["statistic"] == 1.1 and summary["reference"]["start"] == T0.isoformat()
    assert reports.quality_counters(settings) == {
        "runs": 3.0,
        "drift_alerts": 1.0,
        "quality_failures": 1.0,
        "last_drift_share": 0.0,
        "last_run_time_s": (T0 + timedelta(hours=2)).timestamp(),
    }


def test_events_say_what_failed(settings: Settings) -> None:
    run = result(True, dead_letters=50)
    reports.write_report(settings, run, kind="drift")
    reports.record_events(settings, run, drift=True)
    log = EventLog(settings)
    try:
        alert, failed = log.recent()
    finally:
        log.close()
    assert alert.kind == "drift.alert" and alert.details["drifted_columns"] == ["fee_avg_sat"]
    assert alert.details["share"] == 1.0 and alert.details["report"] == run.html_path
    assert failed.kind == "quality.failed" and [r["name"] for r in failed.details["failed"]] == [
        "dead_letter_rate"
    ]


def test_counters_of_a_fresh_pipeline_are_zero(settings: Settings) -> None:
    assert set(reports.quality_counters(settings).values()) == {0.0}


def test_no_column_with_values_is_a_clear_error() -> None:
    empty = pd.DataFrame({"fee_avg_sat": [None, None]}, dtype=float)
    with pytest.raises(ValueError, match="no minutes column has values"):
        drift_report(empty, empty, columns=["fee_avg_sat"])
