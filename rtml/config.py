"""Settings: one `rtml.toml`, every key overridable by `RTML_...` environment variables.

Nested keys use a double underscore: `RTML_WINDOW__ALLOWED_LATENESS_S=30` overrides
`[window] allowed_lateness_s`. The file is `./rtml.toml` unless `RTML_CONFIG` names another.
All state lives under `data_dir`; in the services profile Redis keys and PostgreSQL
schemas carry `namespace`, derived from the data directory, so two pipelines never meet.
"""

from __future__ import annotations

import hashlib
import os
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

Profile = Literal["embedded", "services"]


class IngestSettings(BaseModel):
    ws_url: str = "wss://ws.blockchain.info/inv"
    rest_url: str = "https://blockchain.info/unconfirmed-transactions?format=json"
    stall_timeout_s: float = 30.0
    ping_interval_s: float = 20.0
    reconnect_base_s: float = 1.0
    reconnect_max_s: float = 60.0
    rest_min_interval_s: float = 10.0
    dedup_ttl_s: int = 3 * 3600


class WindowSettings(BaseModel):
    allowed_lateness_s: float = 60.0
    idle_timeout_s: float = 20.0


class FeatureSettings(BaseModel):
    online_minutes: int = 60
    lags: int = 15


class DriftSettings(BaseModel):
    drift_share: float = 0.5
    interval_s: float = 3600.0


class ModelSettings(BaseModel):
    horizon_min: int = 5
    folds: int = 5
    min_gain_vs_baseline: float = 0.05
    # Minutes (closed, before the clock) the first trained model waits for; the bootstrap
    # baseline champion needs far fewer (its calibration is three quantiles of a ratio).
    min_train_minutes: int = 360
    min_baseline_minutes: int = 60
    n_jobs: int = Field(default_factory=lambda: max(1, (os.cpu_count() or 2) - 1))


class ServingSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8000
    admin_token: str | None = None
    max_feature_age_s: float = 600.0


class MonitoringSettings(BaseModel):
    wql_threshold: float = 0.24
    breaches_for_alarm: int = 3


class SchedulerSettings(BaseModel):
    """Cadences on the pipeline's event-time clock (drift's is `drift.interval_s`); `poll_s` is wall time."""

    monitor_interval_s: float = 60.0
    retrain_interval_s: float = 86400.0
    retrain_window_s: float = 7 * 86400.0
    poll_s: float = 0.2


class Settings(BaseSettings):
    """The whole configuration; `get_settings()` builds it from file and environment."""

    model_config = SettingsConfigDict(
        env_prefix="RTML_", env_nested_delimiter="__", extra="ignore", toml_file="rtml.toml"
    )

    profile: Profile = "embedded"
    data_dir: Path = Path(".rtml")
    namespace: str = Field(
        default="", description="Prefix of Redis keys and PostgreSQL schema; derived from data_dir when empty."
    )
    redis_url: str = "redis://127.0.0.1:6379/0"
    postgres_dsn: str = "postgresql://postgres@127.0.0.1:5432/test"
    seed: int = 7

    ingest: IngestSettings = IngestSettings()
    window: WindowSettings = WindowSettings()
    features: FeatureSettings = FeatureSettings()
    drift: DriftSettings = DriftSettings()
    model: ModelSettings = ModelSettings()
    serving: ServingSettings = ServingSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    scheduler: SchedulerSettings = SchedulerSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = Path(os.environ.get("RTML_CONFIG", "rtml.toml"))
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file))

    @cached_property
    def root(self) -> Path:
        """The data directory, absolute and created."""
        path = self.data_dir.expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True)
        return path

    @model_validator(mode="after")
    def _derive_namespace(self) -> Settings:
        """Two data directories never share Redis keys or PostgreSQL schemas."""
        if not self.namespace:
            digest = hashlib.sha1(str(self.data_dir.expanduser().resolve()).encode()).hexdigest()[:10]
            self.namespace = f"rtml_{digest}"
        return self

    def path(self, *parts: str) -> Path:
        """A path under the data directory; its parent folder exists."""
        target = self.root.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def folder(self, *parts: str) -> Path:
        """A folder under the data directory, created."""
        target = self.root.joinpath(*parts)
        target.mkdir(parents=True, exist_ok=True)
        return target


def get_settings(**overrides: object) -> Settings:
    """Settings from `rtml.toml` and `RTML_...` variables; keyword overrides win."""
    return Settings(**overrides)  # type: ignore[arg-type]
