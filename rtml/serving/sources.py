"""What serving needs from the feature store, as a small interface the real store plugs into."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

import pandas as pd


class NoFeatures(LookupError):
    """The feature store has nothing to forecast from (empty, or unreadable)."""


@dataclass(frozen=True)
class FeatureBatch:
    """Model input rows; row i describes the features known at the end of `last_minutes[i]`."""

    last_minutes: Sequence[datetime]
    values: pd.DataFrame

    def feature_time(self, i: int) -> datetime:
        """End of the last closed minute row i used (the as-of time)."""
        return self.last_minutes[i] + timedelta(minutes=1)


class FeatureSource(Protocol):
    """Online features for GET /forecast, and the same feature logic for what-if minutes."""

    @property
    def columns(self) -> Sequence[str]:
        """The model's input columns, in order."""
        ...

    @property
    def min_minutes(self) -> int:
        """How many consecutive minutes a what-if request must give."""
        ...

    def latest(self) -> FeatureBatch:
        """One row from the online store's newest minutes; raises NoFeatures."""
        ...

    def from_minutes(self, minutes: pd.DataFrame) -> FeatureBatch:
        """One row from given MinuteFeatures columns (minute, tx_count, fee_total_sat, fee_avg_sat)."""
        ...
