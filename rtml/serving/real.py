"""The real feature store and model registry behind serving's small interfaces."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import pandas as pd

from rtml.config import Settings
from rtml.features.dataset import FEATURE_COLUMNS, features_for_asof, history_minutes
from rtml.serving.sources import FeatureBatch, NoFeatures
from rtml.serving.swap import ServedModel

# A registry file modified this recently may be modified again within the same mtime tick.
RECENT_S = 0.5


class StoreFeatureSource:
    """Online minutes from the feature store, turned into the model's row by the ETL's own code.

    Every call reads the online store; the feature row is recomputed only when what was read
    changed (a new or revised minute), because the computation is deterministic in its input
    and costs milliseconds while a minute only closes once a minute.
    """

    def __init__(self, settings: Settings) -> None:
        from rtml.features.online import OnlineMinutes

        self.settings = settings
        self._reader = OnlineMinutes(settings)
        self._k = max(settings.features.online_minutes, self.min_minutes)
        self._cached: tuple[bytes, FeatureBatch] | None = None

    @property
    def columns(self) -> Sequence[str]:
        return FEATURE_COLUMNS

    @property
    def min_minutes(self) -> int:
        return history_minutes(self.settings.features.lags)

    def latest(self) -> FeatureBatch:
        minutes = self._reader.last(self._k)
        if minutes.empty:
            raise NoFeatures("the online store holds no minutes yet")
        key = b"".join(minutes[c].values.tobytes() for c in ("minute", "revision", "tx_count", "fee_total_sat"))
        cached = self._cached
        if cached is not None and cached[0] == key:
            return cached[1]
        batch = self._batch(features_for_asof(minutes, lags=self.settings.features.lags))
        self._cached = (key, batch)
        return batch

    def from_minutes(self, minutes: pd.DataFrame) -> FeatureBatch:
        frame = minutes.assign(event_time=minutes["minute"] + timedelta(minutes=1), revision=0)
        return self._batch(features_for_asof(frame, lags=self.settings.features.lags))

    def _batch(self, row: pd.DataFrame) -> FeatureBatch:
        asof: datetime = row["asof"].iloc[0].to_pydatetime()
        return FeatureBatch([asof - timedelta(minutes=1)], row[list(FEATURE_COLUMNS)])


class RegistryModelSource:
    """The MLflow registry's `champion` alias of `fee_forecaster`; errors mapped for the admin API."""

    def __init__(self, settings: Settings) -> None:
        from rtml.model import registry

        registry.quiet_mlflow()
        self.settings = settings
        self._registry = registry
        # registry.load_version downloads `models:/...` URIs, which MLflow resolves against the
        # process-wide registry URI whatever URI is passed: in a fresh serving process that is
        # not this pipeline's store until set here.
        import mlflow

        mlflow.set_tracking_uri(registry.tracking_uri(settings))
        mlflow.set_registry_uri(registry.tracking_uri(settings))
        self._db = registry.registry_file(settings)
        self._seen: tuple[tuple[int, int], ...] | None = None
        self._version: str | None = None

    def champion_version(self) -> str | None:
        """Asks the registry only when its SQLite file changed (a query costs ~5 ms, a stat ~5 µs).

        A file's mtime has the kernel clock's tick (a few ms) as granularity, and an alias
        update keeps the file size, so a file written within the last RECENT_S is not trusted to
        show the next write: the following poll asks again.
        """
        now_ns = time.time_ns()
        marker = self._db_marker()
        if marker is None or marker != self._seen:
            self._version = self._registry.champion_version(self.settings)
            recent = marker is not None and now_ns - max(m for m, _ in marker) < RECENT_S * 1e9
            self._seen = None if recent else marker
        return self._version

    def _db_marker(self) -> tuple[tuple[int, int], ...] | None:
        """(mtime_ns, size) of the SQLite file and its journals; None in the services profile."""
        if self._db is None:
            return None
        marks = []
        for suffix in ("", "-wal", "-journal"):
            try:
                st = os.stat(f"{self._db}{suffix}")
            except FileNotFoundError:
                marks.append((0, 0))
            else:
                marks.append((st.st_mtime_ns, st.st_size))
        return tuple(marks)

    def load_champion(self) -> ServedModel:
        return self._registry.load_champion(self.settings)

    def info(self, model: ServedModel) -> dict[str, Any]:
        assert isinstance(model, self._registry.LoadedModel)
        return {
            "kind": model.kind,
            "training_start": model.train_start,
            "training_end": model.train_end,
            "metrics": model.metrics,
        }

    def promote(self, version: str) -> str:
        from mlflow.exceptions import MlflowException

        try:
            self._registry.promote(self.settings, version, reason="admin API")
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise LookupError(f"version {version} of {self._registry.MODEL_NAME} is not registered") from exc
            raise
        return version

    def rollback(self) -> str:
        try:
            return self._registry.rollback(self.settings)
        except LookupError as exc:  # nothing to roll back to: a conflict with the registry's state
            raise ValueError(str(exc)) from exc
