"""Data-quality rules: each has a name, a threshold and a result that is stored with the run.

Every rule is a pure function of the numbers it judges, so each can be made to pass and to
fail in a test; `run_rules` gathers those numbers from the minutes, the transaction sample and
the counters of ingestion and aggregation. A source that is absent (not built yet, not
running, no data in the window) makes its rule `skipped` with the reason; nothing here raises.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from rtml.aggregate.embedded import aggregate_counters
from rtml.config import Settings
from rtml.sources.ingest import ingest_counters

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("rtml.quality")

Status = Literal["pass", "fail", "skipped"]
NO_DATA = "skipped: no data"


@dataclass(frozen=True)
class Thresholds:
    """Limits of the rules. Rates are shares of the events seen; ages are seconds."""

    max_invalid_fees: int = 0
    max_missing_share: float = 0.01
    max_duplicate_rate: float = 0.05
    max_dead_letter_rate: float = 0.01
    max_late_rate: float = 0.01
    max_age_s: float = 600.0
    # Bitcoin carries 3-7 tx/s (180-420 a minute); outside 5..5000 a minute something is broken.
    tx_band: tuple[float, float] = (5.0, 5000.0)
    max_outside_band_share: float = 0.05


@dataclass(frozen=True)
class RuleResult:
    name: str
    status: Status
    value: float | None
    threshold: str
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _skipped(name: str, threshold: str, why: str = "no data") -> RuleResult:
    return RuleResult(name, "skipped", None, threshold, f"skipped: {why}")


def _upper(name: str, value: float, limit: float, detail: str) -> RuleResult:
    return RuleResult(name, "pass" if value <= limit else "fail", value, f"<= {limit:g}", detail)


def fees_valid(negative: int | None, null: int | None, t: Thresholds = Thresholds()) -> RuleResult:
    """No negative or null fee (in minutes: total < 0, or no average although tx_count > 0)."""
    name = "fees_not_negative_or_null"
    if negative is None or null is None:
        return _skipped(name, f"<= {t.max_invalid_fees}")
    return _upper(name, negative + null, t.max_invalid_fees, f"{negative} negative, {null} null")


def missing_minutes(present: int | None, expected: int | None, t: Thresholds = Thresholds()) -> RuleResult:
    """Share of minutes absent between the first and the last minute seen (the engine emits empty ones)."""
    name = "missing_minutes_share"
    if present is None or not expected:
        return _skipped(name, f"<= {t.max_missing_share:g}")
    share = max(expected - present, 0) / expected
    return _upper(name, share, t.max_missing_share, f"{expected - present} of {expected} minutes missing")


def _rate(name: str, what: str, count: float | None, total: float | None, limit: float) -> RuleResult:
    if count is None or not total:
        return _skipped(name, f"<= {limit:g}")
    return _upper(name, count / total, limit, f"{count:g} {what} of {total:g}")


def duplicate_rate(
    duplicates: float | None, received: float | None, t: Thresholds = Thresholds()
) -> RuleResult:
    return _rate("duplicate_rate", "duplicates", duplicates, received, t.max_duplicate_rate)


def dead_letter_rate(
    dead_letters: float | None, received: float | None, t: Thresholds = Thresholds()
) -> RuleResult:
    return _rate("dead_letter_rate", "dead letters", dead_letters, received, t.max_dead_letter_rate)


def late_event_rate(late: float | None, events: float | None, t: Thresholds = Thresholds()) -> RuleResult:
    return _rate("late_event_rate", "late events", late, events, t.max_late_rate)


def freshness(newest_end: datetime | None, now: datetime, t: Thresholds = Thresholds()) -> RuleResult:
    """Age of the newest minute: the end of the newest closed window, against the wall clock."""
    name = "freshness_s"
    if newest_end is None:
        return _skipped(name, f"<= {t.max_age_s:g}")
    age = (now - newest_end).total_seconds()
    return _upper(name, age, t.max_age_s, f"newest minute ended {newest_end:%Y-%m-%d %H:%M} UTC")


def tx_count_band(counts: Sequence[float] | None, t: Thresholds = Thresholds()) -> RuleResult:
    """Share of minutes whose tx_count lies outside the plausible band."""
    name = "tx_count_in_band"
    low, high = t.tx_band
    if counts is None or len(counts) == 0:
        return _skipped(name, f"<= {t.max_outside_band_share:g} outside {low:g}..{high:g}")
    outside = sum(1 for c in counts if not low <= c <= high)
    share = outside / len(counts)
    return RuleResult(
        name,
        "pass" if share <= t.max_outside_band_share else "fail",
        share,
        f"<= {t.max_outside_band_share:g} outside {low:g}..{high:g}",
        f"{outside} of {len(counts)} minutes outside the band",
    )


# ---------------------------------------------------------------- gathering the numbers

# Where the other parts expose their counters (`dict[str, float]`).
COUNTER_SOURCES: dict[str, Callable[[Settings], Mapping[str, float]]] = {
    "ingest": ingest_counters,  # received, valid, duplicates, dead_letters
    "aggregate": aggregate_counters,  # events_in, late, duplicates
}


def gather_counters(settings: Settings, part: str) -> Mapping[str, float] | None:
    """A part's counters, or None when the part cannot answer (logged)."""
    try:
        return COUNTER_SOURCES[part](settings)
    except Exception as exc:  # a broken counter source must not stop the other rules
        log.warning("%s counters unavailable: %s", part, exc)
        return None


def _pick(counters: Mapping[str, float] | None, name: str) -> float | None:
    return None if counters is None or name not in counters else float(counters[name])


def minute_numbers(minutes: pd.DataFrame | None) -> dict[str, Any]:
    """The numbers the minute-based rules need; empty when there are no minutes."""
    import pandas as pd

    if minutes is None or minutes.empty:
        return {}
    frame = minutes
    if "revision" in frame.columns:
        frame = frame.sort_values(["minute", "revision"]).drop_duplicates("minute", keep="last")
    stamps = pd.to_datetime(frame["minute"], utc=True)
    expected = int((stamps.max() - stamps.min()) / pd.Timedelta(minutes=1)) + 1
    fee_total = pd.to_numeric(frame["fee_total_sat"], errors="coerce")
    fee_avg = pd.to_numeric(frame["fee_avg_sat"], errors="coerce")
    tx_count = pd.to_numeric(frame["tx_count"], errors="coerce")
    return {
        "negative": int((fee_total < 0).sum() + (fee_avg < 0).sum()),
        "null": int(fee_total.isna().sum() + (fee_avg.isna() & (tx_count > 0)).sum()),
        "present": int(stamps.nunique()),
        "expected": expected,
        "newest_end": (stamps.max() + pd.Timedelta(minutes=1)).to_pydatetime(),
        "tx_counts": tx_count.fillna(0).tolist(),
    }


def run_rules(
    settings: Settings,
    minutes: pd.DataFrame | None,
    transactions: pd.DataFrame | None,
    now: datetime,
    thresholds: Thresholds = Thresholds(),
    newest_end: datetime | None = None,
) -> list[RuleResult]:
    """Every rule over the current window's minutes and transactions and the parts' counters.

    Freshness judges `newest_end` (the end of the newest minute in the store) when given, so
    checking a past window does not make it fail; else the newest minute of `minutes`.
    """
    import pandas as pd

    m = minute_numbers(minutes)
    negative, null = m.get("negative"), m.get("null")
    if transactions is not None and len(transactions):
        fees = pd.to_numeric(transactions["fee_sat"], errors="coerce")
        negative = (negative or 0) + int((fees < 0).sum())
        null = (null or 0) + int(fees.isna().sum())
    ingest = gather_counters(settings, "ingest")
    aggregate = gather_counters(settings, "aggregate")
    received = _pick(ingest, "received")
    return [
        fees_valid(negative, null, thresholds),
        missing_minutes(m.get("present"), m.get("expected"), thresholds),
        duplicate_rate(_pick(ingest, "duplicates"), received, thresholds),
        dead_letter_rate(_pick(ingest, "dead_letters"), received, thresholds),
        late_event_rate(_pick(aggregate, "late"), _pick(aggregate, "events_in"), thresholds),
        freshness(newest_end or m.get("newest_end"), now, thresholds),
        tx_count_band(m.get("tx_counts"), thresholds),
    ]
