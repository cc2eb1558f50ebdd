"""Evaluation (wQL, MAE, coverage per hour and over a sliding window) and the alarm policy,
on the real quality store and event log of both profiles."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest

from rtml.config import Settings
from rtml.model.backtest import evaluate
from rtml.monitoring.alarms import judge_hours
from rtml.monitoring.evaluate import (
    QualityBackend,
    QualityStore,
    hourly_quality,
    join_actuals,
    sliding_quality,
)
from rtml.monitoring.events import EventBackend, EventLog

START = pd.Timestamp("2024-10-01T00:00:00Z")


def _minutes(n: int, rng: np.random.Generator) -> pd.DataFrame:
    minute = pd.date_range(START, periods=n, freq="min")
    counts = rng.poisson(150, n)
    counts[7] = 0  # an empty minute has no average and judges nothing
    avg = rng.lognormal(8, 0.3, n)
    return pd.DataFrame(
        {
            "minute": minute,
            "tx_count": counts,
            "fee_total_sat": np.where(counts > 0, np.rint(avg * counts), 0).astype(int),
            "fee_avg_sat": np.where(counts > 0, np.rint(avg * counts) / np.maximum(counts, 1), np.nan),
            "event_time": minute + pd.Timedelta(minutes=1),
            "revision": 0,
        }
    )


def _forecasts(minutes: pd.DataFrame, scale: np.ndarray, version: str = "1") -> pd.DataFrame:
    p50 = 3000.0 * scale
    return pd.DataFrame(
        {"target_minute": minutes["minute"], "p10": p50 * 0.7, "p50": p50, "p90": p50 * 1.4, "model_version": version}
    )


def test_hourly_and_sliding_quality_match_the_backtest_metrics() -> None:
    rng = np.random.default_rng(3)
    minutes = _minutes(180, rng)
    forecasts = _forecasts(minutes, np.ones(180))
    # A client asked twice for the first target: only the last answer counts.
    repeat = forecasts.iloc[[0]].assign(p50=1.0, p10=0.5, p90=2.0)
    joined = join_actuals(pd.concat([repeat, forecasts.iloc[1:], forecasts.iloc[[0]]]), minutes)
    assert len(joined) == 179  # 180 targets, one empty minute
    assert joined.loc[0, "p50"] == 3000.0

    hourly = hourly_quality(joined)
    assert list(hourly["hour"]) == [START, START + pd.Timedelta(hours=1), START + pd.Timedelta(hours=2)]
    for row in hourly.itertuples():
        group = joined[joined["target_minute"].dt.floor("h") == row.hour]
        expected = evaluate(group["y"].to_numpy(), group[["p10", "p50", "p90"]].to_numpy())
        assert row.n == expected.n
        assert row.wql == pytest.approx(expected.wql)
        assert row.mae == pytest.approx(expected.mae)
        assert row.coverage == pytest.approx(expected.coverage)

    # The 60-minute window ending at the last minute of an hour is exactly that hour.
    sliding = sliding_quality(joined, window_minutes=60).set_index("target_minute")
    end_of_second_hour = START + pd.Timedelta(minutes=119)
    assert sliding.loc[end_of_second_hour, "wql"] == pytest.approx(hourly.loc[1, "wql"])
    assert sliding.loc[end_of_second_hour, "n"] == hourly.loc[1, "n"]


@pytest.fixture
def stores(backend_settings: Settings) -> Iterator[tuple[Settings, QualityBackend, EventBackend]]:
    store, events = QualityStore(backend_settings), EventLog(backend_settings)
    yield backend_settings, store, events
    store.close()
    events.close()


def _hours(wqls: list[float], versions: list[str] | None = None, offset: int = 0) -> pd.DataFrame:
    versions = versions or ["1"] * len(wqls)
    return pd.DataFrame(
        {
            "hour": [START + pd.Timedelta(hours=offset + i) for i in range(len(wqls))],
            "n": 60,
            "wql": wqls,
            "mae": 100.0,
            "coverage": 0.5,
            "model_version": versions,
        }
    )


def test_three_consecutive_breaches_raise_one_alarm(stores: tuple[Settings, QualityBackend, EventBackend]) -> None:
    settings, store, events = stores
    assert settings.monitoring.wql_threshold == 0.24 and settings.monitoring.breaches_for_alarm == 3
    # ok, breach, breach, ok (streak broken), breach x4 -> alarm at the 3rd, the 4th starts a new count.
    first = judge_hours(settings, _hours([0.1, 0.3, 0.3, 0.2, 0.5, 0.4, 0.3]), store, events)
    assert first.alarm
    assert [v.breach for v in first.verdicts] == [False, True, True, False, True, True, True]
    kinds = [(e.kind, e.details["consecutive"]) for e in events.recent()]
    assert kinds == [
        ("monitor.breach", 1), ("monitor.breach", 2),
        ("monitor.breach", 1), ("monitor.breach", 2), ("monitor.breach", 3), ("monitor.alarm", 3),
    ]  # fmt: skip
    alarm = events.recent(prefix="monitor.alarm")[-1]
    assert alarm.details["hour"] == (START + pd.Timedelta(hours=6)).isoformat()
    assert alarm.details["wql"] == 0.3 and alarm.details["threshold"] == 0.24

    # Judged hours are not judged again; the count restarts after an alarm.
    again = judge_hours(settings, _hours([0.1, 0.3, 0.3, 0.2, 0.5, 0.4, 0.3]), store, events)
    assert again.verdicts == [] and not again.alarm
    later = judge_hours(settings, _hours([0.6, 0.6], offset=7), store, events)
    assert not later.alarm
    assert [e.details["consecutive"] for e in events.recent(prefix="monitor.breach")][-2:] == [1, 2]
    assert [v.hour for v in store.hours()] == [START + pd.Timedelta(hours=i) for i in range(9)]


def test_a_new_model_version_starts_a_new_streak(stores: tuple[Settings, QualityBackend, EventBackend]) -> None:
    settings, store, events = stores
    result = judge_hours(settings, _hours([0.3, 0.3, 0.3, 0.3], ["1", "1", "2", "2"]), store, events)
    assert not result.alarm
    assert [e.details["consecutive"] for e in events.recent(prefix="monitor.breach")] == [1, 2, 1, 2]
    assert [e.details["model_version"] for e in events.recent(prefix="monitor.breach")] == ["1", "1", "2", "2"]
