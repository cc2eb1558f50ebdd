"""The quality store's contract (`QualityBackend`), for every backend."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from conformance_kit import Backend, Case, backend_cases

from rtml.config import BACKENDS as PROFILE_BACKENDS
from rtml.config import Settings
from rtml.contracts import datetime_to_ms
from rtml.monitoring import evaluate
from rtml.monitoring.evaluate import (
    HourVerdict,
    PostgresQualityStore,
    QualityBackend,
    QualityStore,
    SqliteQualityStore,
    open_quality_store,
)

BACKENDS: dict[type[QualityBackend], Backend[QualityBackend]] = {
    SqliteQualityStore: Backend("embedded", SqliteQualityStore),
    PostgresQualityStore: Backend("services", PostgresQualityStore),
}
case = backend_cases(BACKENDS)
H0 = datetime(2024, 10, 1, tzinfo=UTC)

Opened = tuple[type[QualityBackend], Settings, QualityBackend]


def verdict(hour: int, wql: float = 0.2, breach: bool = False, version: str = "1") -> HourVerdict:
    return HourVerdict(H0 + timedelta(hours=hour), 60, wql, 1.5, 0.8, version, breach)


def test_every_backend_is_in_the_suite_and_the_factory_picks_by_profile() -> None:
    assert set(evaluate._QUALITY_BACKENDS.items()) == {(PROFILE_BACKENDS[b.profile]["quality"], c) for c, b in BACKENDS.items()}
    assert QualityStore is open_quality_store


@pytest.fixture
def opened(case: Case[QualityBackend]) -> tuple[type[QualityBackend], Settings, QualityBackend]:
    """The store under test: `case` runs each test once per class of BACKENDS and closes it."""
    return case.cls, case.settings, case.open()


def test_the_factory_opens_this_backend(opened: Opened) -> None:
    cls, settings, _ = opened
    store = open_quality_store(settings)
    try:
        assert type(store) is cls
    finally:
        store.close()


def test_an_hour_is_kept_once_its_last_verdict_wins(opened: Opened) -> None:
    _, _, store = opened
    assert (store.count(), store.last_hour(), store.hours()) == (0, None, [])
    store.put(verdict(1))
    store.put(verdict(0, breach=True))
    store.put(verdict(1, wql=0.9, breach=True, version="2"))  # judged again (a re-run): replaced
    assert store.count() == 2
    assert store.hours() == [verdict(0, breach=True), verdict(1, wql=0.9, breach=True, version="2")]
    assert store.last_hour() == H0 + timedelta(hours=1)


def test_hours_come_oldest_first_and_limit_keeps_the_newest(opened: Opened) -> None:
    _, _, store = opened
    for h in (3, 0, 2, 1):
        store.put(verdict(h, wql=h / 10))
    assert [v.hour for v in store.hours(limit=2)] == [H0 + timedelta(hours=2), H0 + timedelta(hours=3)]
    assert [v.wql for v in store.hours()] == [0.0, 0.1, 0.2, 0.3]


def test_retention_forgets_hours_before_the_cutoff(opened: Opened) -> None:
    _, _, store = opened
    for h in range(5):
        store.put(verdict(h))
    cutoff = datetime_to_ms(H0 + timedelta(hours=3))
    assert store.trim(cutoff) == 3
    assert store.trim(cutoff) == 0
    assert [v.hour for v in store.hours()] == [H0 + timedelta(hours=3), H0 + timedelta(hours=4)]
    assert store.count() == 2


def test_what_is_written_outlives_close_and_close_is_idempotent(opened: Opened) -> None:
    cls, settings, store = opened
    store.put(verdict(7, breach=True))
    store.close()
    store.close()
    again = cls(settings)
    try:
        assert again.hours() == [verdict(7, breach=True)]
    finally:
        again.close()
