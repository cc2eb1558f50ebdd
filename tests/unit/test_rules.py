"""Each data-quality rule made to pass and made to fail, and skipped (never raising) without data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from rtml.config import Settings
from rtml.quality import rules
from rtml.quality.rules import RuleResult, Thresholds

NOW = datetime(2024, 10, 1, 12, 0, tzinfo=UTC)


def minutes(
    n: int = 60, tx: int = 150, fee: float = 4000.0, start: datetime = NOW - timedelta(hours=1)
) -> pd.DataFrame:
    stamps = pd.date_range(start, periods=n, freq="min", tz="UTC")
    return pd.DataFrame(
        {
            "minute": stamps,
            "tx_count": [tx] * n,
            "fee_total_sat": [int(tx * fee)] * n,
            "fee_avg_sat": [fee if tx else None] * n,
            "event_time": stamps + pd.Timedelta(minutes=1),
            "revision": [0] * n,
        }
    )


@pytest.mark.parametrize(
    ("passing", "failing"),
    [
        (rules.fees_valid(0, 0), rules.fees_valid(1, 0)),
        (rules.fees_valid(0, 0), rules.fees_valid(0, 2)),
        (rules.missing_minutes(60, 60), rules.missing_minutes(55, 60)),
        (rules.duplicate_rate(4, 100), rules.duplicate_rate(6, 100)),
        (rules.dead_letter_rate(1, 1000), rules.dead_letter_rate(11, 1000)),
        (rules.late_event_rate(0, 1000), rules.late_event_rate(20, 1000)),
        (rules.freshness(NOW - timedelta(minutes=2), NOW), rules.freshness(NOW - timedelta(minutes=11), NOW)),
        (rules.tx_count_band([150] * 100), rules.tx_count_band([150] * 90 + [0] * 10)),
        (rules.tx_count_band([150] * 99 + [9000]), rules.tx_count_band([150] * 90 + [9000] * 10)),
    ],
    ids=[
        "negative-fee",
        "null-fee",
        "missing",
        "duplicates",
        "dead-letters",
        "late",
        "fresh",
        "band-low",
        "band-high",
    ],
)
def test_rule_passes_and_fails(passing: RuleResult, failing: RuleResult) -> None:
    assert passing.name == failing.name
    assert (passing.status, failing.status) == ("pass", "fail"), (passing, failing)
    assert failing.value is not None and failing.threshold and failing.detail


def test_thresholds_are_configurable() -> None:
    strict = Thresholds(max_duplicate_rate=0.01, tx_band=(200, 300))
    assert rules.duplicate_rate(4, 100, strict).status == "fail"
    assert rules.tx_count_band([150] * 10, strict).status == "fail"


@pytest.mark.parametrize(
    "rule",
    [
        rules.fees_valid(None, None),
        rules.missing_minutes(None, None),
        rules.duplicate_rate(None, None),
        rules.dead_letter_rate(3, None),
        rules.late_event_rate(None, 10),
        rules.freshness(None, NOW),
        rules.tx_count_band([]),
    ],
)
def test_rule_without_data_is_skipped(rule: RuleResult) -> None:
    assert rule.status == "skipped" and rule.detail == rules.NO_DATA and rule.value is None


def test_run_rules_on_clean_minutes_passes(settings: Settings) -> None:
    results = {r.name: r for r in rules.run_rules(settings, minutes(), None, now=NOW + timedelta(minutes=1))}
    assert len(results) == 7
    for name in ("fees_not_negative_or_null", "missing_minutes_share", "freshness_s", "tx_count_in_band"):
        assert results[name].status == "pass", results[name]


def test_run_rules_finds_bad_minutes_and_transactions(settings: Settings) -> None:
    frame = minutes()
    frame = frame.drop(index=range(10, 20))  # 10 of 60 minutes missing
    frame.loc[30, "fee_total_sat"] = -5  # negative
    frame.loc[31, "fee_avg_sat"] = None  # null although tx_count > 0
    frame.loc[32:40, "tx_count"] = 0  # 9 of 50 minutes below the band
    tx = pd.DataFrame({"fee_sat": [100, -1, None], "size": [200, 200, 200]})
    results = {r.name: r for r in rules.run_rules(settings, frame, tx, now=NOW + timedelta(hours=1))}
    assert results["fees_not_negative_or_null"].status == "fail"
    assert results["fees_not_negative_or_null"].value == 4  # 1 + 1 in minutes, 1 + 1 in transactions
    assert results["missing_minutes_share"].value == pytest.approx(10 / 60)
    assert results["freshness_s"].status == "fail" and results["freshness_s"].value == pytest.approx(3600)
    assert results["tx_count_in_band"].status == "fail"


def test_latest_revision_of_a_minute_is_judged(settings: Settings) -> None:
    frame = minutes(n=5)
    fixed = frame.iloc[[2]].assign(fee_total_sat=600_000, revision=1)
    broken = frame.assign(fee_total_sat=frame["fee_total_sat"].where(frame.index != 2, -1))
    results = rules.run_rules(settings, pd.concat([broken, fixed]), None, now=NOW)
    assert results[0].status == "pass"  # revision 1 replaced the negative revision 0


def test_run_rules_without_any_source_skips_and_never_raises(settings: Settings) -> None:
    results = rules.run_rules(settings, None, None, now=NOW)
    assert [r.status for r in results] == ["skipped"] * 7


def test_counter_source_that_fails_is_skipped(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(rules.COUNTER_SOURCES, "ingest", lambda s: 1 / 0)
    assert rules.gather_counters(settings, "ingest") is None
    statuses = {r.name: r.status for r in rules.run_rules(settings, minutes(), None, now=NOW)}
    assert statuses["duplicate_rate"] == statuses["dead_letter_rate"] == "skipped"
