"""What a drift or quality check found: the verdicts the report writer, the event log and the
CLI read, apart from the statistics that produce them (so none of those imports the check)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rtml.quality.rules import RuleResult


@dataclass(frozen=True)
class TimeRange:
    """A half-open time range [start, end), UTC."""

    start: datetime
    end: datetime

    def __str__(self) -> str:
        return f"{self.start:%Y-%m-%dT%H:%M}..{self.end:%Y-%m-%dT%H:%M}"

    def to_dict(self) -> dict[str, str]:
        return {"start": self.start.isoformat(), "end": self.end.isoformat()}


@dataclass(frozen=True)
class ColumnDrift:
    """The verdict on one column: `statistic` compared with `threshold` by `method`."""

    column: str
    dataset: str  # "minutes" or "transactions"
    method: str
    statistic: float
    threshold: float
    drifted: bool
    reference_rows: int
    current_rows: int


@dataclass
class DriftResult:
    """Per-column verdicts and the overall one: drift when the drifted share >= `drift_share`."""

    columns: list[ColumnDrift]
    drift_share: float
    reference: TimeRange | None = None
    current: TimeRange | None = None
    rules: list[RuleResult] = field(default_factory=list)
    html_path: str | None = None
    json_path: str | None = None
    skipped: str | None = None  # why no drift verdict could be given (e.g. "no data")
    snapshots: dict[str, Any] = field(default_factory=dict, repr=False)  # Evidently, for the HTML

    @property
    def share(self) -> float:
        return sum(c.drifted for c in self.columns) / len(self.columns) if self.columns else 0.0

    @property
    def drifted(self) -> bool:
        return bool(self.columns) and self.share >= self.drift_share

    @property
    def drifted_columns(self) -> list[str]:
        return [c.column for c in self.columns if c.drifted]

    @property
    def verdict(self) -> str:
        if self.skipped:
            return f"skipped: {self.skipped}"
        return "drift" if self.drifted else "no drift"

    @property
    def failed_rules(self) -> list[str]:
        return [r.name for r in self.rules if r.status == "fail"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "drifted": self.drifted,
            "share": self.share,
            "drift_share": self.drift_share,
            "drifted_columns": self.drifted_columns,
            "reference": self.reference.to_dict() if self.reference else None,
            "current": self.current.to_dict() if self.current else None,
            "columns": [asdict(c) for c in self.columns],
            "rules": [r.to_dict() for r in self.rules],
            "failed_rules": self.failed_rules,
            "html_path": self.html_path,
            "json_path": self.json_path,
        }
