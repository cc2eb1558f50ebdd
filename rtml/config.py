"""Settings: one `rtml.toml`, every key overridable by `RTML_...` environment variables.

Nested keys use a double underscore: `RTML_WINDOW__ALLOWED_LATENESS_S=30` overrides
`[window] allowed_lateness_s`. The file is `./rtml.toml` unless `RTML_CONFIG` names another.
All state lives under `data_dir`; in the services profile Redis keys and PostgreSQL
schemas carry `namespace`, derived from the data directory, so two pipelines never meet.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from functools import cached_property
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

Profile = Literal["embedded", "services"]
# What each part keeps its data in, by profile: the one place the profile picks a backend. A
# part's factory maps the type to its class, as Feast maps an online store's `type` to a class;
# a new backend is a new type here and a class there (that passes tests/conformance).
BACKENDS: dict[str, dict[str, str]] = {
    "embedded": {
        "stream": "sqlite", "dedup": "sqlite", "dead_letters": "sqlite", "counters": "sqlite",
        "offline": "parquet", "online": "sqlite", "events": "sqlite", "quality": "sqlite",
        "predictions": "sqlite", "registry": "sqlite",
    },
    "services": {
        "stream": "redis", "dedup": "redis", "dead_letters": "redis", "counters": "redis",
        "offline": "postgres", "online": "redis", "events": "postgres", "quality": "postgres",
        "predictions": "postgres", "registry": "postgres",
    },
}  # fmt: skip
# The backend types that are services of their own (reached over the network, restarted, away
# for a minute): `rtml up` checks them, `rtml status` shows their health.
SERVICES = ("redis", "postgres")
# The marker a data directory carries from its creation: what it is, for whom, and where its
# services live. `rtml down --purge` deletes nothing that does not carry it.
MARKER = "rtml-data-dir.json"
NAMESPACE_RULE = re.compile(r"^[a-z][a-z0-9_]{0,40}$")
NAMESPACE_RULE_TEXT = (
    "a namespace must match ^[a-z][a-z0-9_]{0,40}$ (a lower-case letter, then up to 40 lower-case "
    "letters, digits or _) and must not be a reserved PostgreSQL schema (public, pg_*, information_schema)"
)


class IngestSettings(BaseModel):
    ws_url: str = "wss://ws.blockchain.info/inv"
    rest_url: str = "https://blockchain.info/unconfirmed-transactions?format=json"
    stall_timeout_s: float = 30.0
    ping_interval_s: float = 20.0
    reconnect_base_s: float = 1.0
    reconnect_max_s: float = 60.0
    rest_min_interval_s: float = 10.0
    dedup_ttl_s: int = 3 * 3600
    # Live sources (ws, rest) refuse an event this far ahead of its ingest time.
    max_future_s: float = 300.0
    # Raw text kept per dead letter (plus the frame's full length and SHA-256).
    dead_letter_max_bytes: int = Field(default=64 * 1024, ge=256)
    # Live frames held while the stream's store is down (rtml.sources.buffer): in memory, then on
    # disk; past both, dropped and counted (`buffer_dropped`). Bitcoin's 3-7 tx/s fill the memory
    # part in about 5 hours; a frame takes about 1 KB on disk.
    buffer_memory_events: int = Field(default=100_000, ge=0)
    buffer_disk_bytes: int = Field(default=256 * 1024 * 1024, ge=0)


class StreamSettings(BaseModel):
    # Redis Streams are a durable log only when Redis persists them (AOF): `rtml up` refuses a
    # Redis without AOF unless this is set, and `rtml status` then warns.
    allow_volatile_redis: bool = False


class WindowSettings(BaseModel):
    allowed_lateness_s: float = 60.0
    idle_timeout_s: float = 20.0
    # An event further ahead of the watermark waits for corroboration (see windows.ClockGuard).
    max_jump_s: float = Field(default=3600.0, gt=0)


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
    max_body_bytes: int = Field(default=1 << 20, gt=0, description="Larger request bodies get a 413.")
    allowed_hosts: list[str] | None = Field(
        default=None,
        description="Host headers answered (others get a 400); default: the bind host, localhost, 127.0.0.1, ::1.",
    )

    def hosts(self) -> list[str]:
        """The Host names answered: a rebinding DNS name pointing at 127.0.0.1 is not among them."""
        if self.allowed_hosts is not None:
            return list(self.allowed_hosts)
        return list(dict.fromkeys([self.host, "localhost", "127.0.0.1", "::1"]))


class MonitoringSettings(BaseModel):
    wql_threshold: float = 0.24
    breaches_for_alarm: int = 3
    metrics_cache_s: float = Field(default=10.0, ge=0, description="The pipeline's /metrics are read at most this often.")


class SchedulerSettings(BaseModel):
    """Cadences on the pipeline's event-time clock (drift's is `drift.interval_s`); `poll_s` is wall time."""

    monitor_interval_s: float = 60.0
    retrain_interval_s: float = 86400.0
    retrain_window_s: float = 7 * 86400.0
    # A drift alert starts a retraining at most once per this much event time: drift that
    # persists (a champion trained on a short or old window) would otherwise retrain every check.
    drift_retrain_gap_s: float = 6 * 3600.0
    poll_s: float = 0.2


class RetentionSettings(BaseModel):
    """How much each store keeps, by event time on the pipeline clock (rtml.ops.retention).

    Defaults for a laptop running for a year at Bitcoin's ~5 tx/s: what is bounded stays in
    the low gigabytes, and the two records that are the pipeline's memory are kept forever.
    """

    # Two days of raw events (~1.7 M rows, ~200 MB): enough to rebuild the engine's state or
    # re-run a day's aggregation; the archive is the long-term raw record.
    stream_hours: float = 48.0
    # Refused input is kept long enough for a person to look at it after a holiday.
    dead_letters_days: float = 30.0
    # ... but never more than this many (the oldest go first, counted in `dead_letters_dropped`),
    # so a flood of bad frames cannot fill a disk within the window: at most this many times
    # `ingest.dead_letter_max_bytes` (64 KiB: 3.3 GB) even if every frame is huge, ~50 MB typically.
    dead_letters_max_rows: int = Field(default=50_000, ge=1)
    # The pipeline's own forecasts: monitoring judges hours closed within a day; 90 days keeps
    # the quality history of a season (~130 k rows).
    predictions_days: float = 90.0
    # Callers' forecasts are only counted and shown, never judged: a month is plenty.
    caller_predictions_days: float = 30.0
    # Alerts, gate decisions, promotions: a year of them is a few MB.
    events_days: float = 365.0
    # A drift report's HTML weighs 4-9 MB and one is written an hour: a week is about 1.5 GB.
    reports_days: float = 7.0
    # Serving reads the last hour and its lags; two days covers any restart.
    online_days: float = 2.0
    # Artifacts of versions that were never champion (a rejected model is evidence for a month).
    candidates_days: float = 30.0
    # How many past champions rollback can return to; older ones age out like candidates
    # (each version is a few MB, and a pipeline that retrains daily promotes often).
    champion_history: int = 10
    # 0 keeps forever: the archive is the raw record and the offline store the training data.
    archive_days: float = 0.0
    offline_days: float = 0.0
    # Cadence of the retention job on the pipeline clock.
    interval_s: float = 3600.0


class SpoolSettings(BaseModel):
    """Services: records PostgreSQL could not take wait in `<data_dir>/spool/` (rtml.spool).

    A minute of outage spools ~60 minutes, a few events and ~60 forecasts plus callers'; the
    bound holds days of that, and what waits longer than `max_age_s` is dropped and counted.
    """

    max_records: int = Field(default=200_000, ge=1, description="Records kept per store; past it the oldest go.")
    max_age_s: float = Field(default=7 * 86400.0, gt=0, description="Spooled records older than this go.")


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
    stream: StreamSettings = StreamSettings()
    window: WindowSettings = WindowSettings()
    features: FeatureSettings = FeatureSettings()
    drift: DriftSettings = DriftSettings()
    model: ModelSettings = ModelSettings()
    serving: ServingSettings = ServingSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    scheduler: SchedulerSettings = SchedulerSettings()
    retention: RetentionSettings = RetentionSettings()
    spool: SpoolSettings = SpoolSettings()

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
        """The data directory, absolute and created. A directory rtml creates (or finds empty)
        gets the marker; an existing one with other files in it does not, so purge refuses it."""
        path = self.data_dir.expanduser().resolve()
        fresh = not path.exists() or (path.is_dir() and not any(path.iterdir()))
        path.mkdir(parents=True, exist_ok=True)
        if fresh:
            write_marker(path, self)
        return path

    @field_validator("namespace")
    @classmethod
    def _valid_namespace(cls, value: str) -> str:
        """Purge matches `<namespace>:*` and drops the schema `<namespace>`: `a*` or `public`
        would reach another pipeline's keys or PostgreSQL's own schema."""
        if value and (
            not NAMESPACE_RULE.match(value) or value in ("public", "information_schema") or value.startswith("pg_")
        ):
            raise ValueError(f"invalid namespace {value!r}: {NAMESPACE_RULE_TEXT}")
        return value

    @model_validator(mode="after")
    def _derive_namespace(self) -> Settings:
        """Two data directories never share Redis keys or PostgreSQL schemas; a directory keeps
        the profile and namespace it was created with (its marker), so no command repeats them."""
        marker = read_marker(self.data_dir.expanduser().resolve())
        if marker is not None:
            where = self.data_dir.expanduser().resolve() / MARKER
            for key in ("profile", "namespace"):
                given = getattr(self, key)
                if key in self.model_fields_set and given and given != marker[key]:
                    raise ValueError(
                        f"{key} {given!r} conflicts with the data directory, created for {key} "
                        f"{marker[key]!r} (recorded in {where}): drop the {key} setting "
                        f"(--{key} / RTML_{key.upper()}) or use another data directory"
                    )
            self.profile = "services" if marker["profile"] == "services" else "embedded"
            self.namespace = marker["namespace"]
        if not self.namespace:
            digest = hashlib.sha1(str(self.data_dir.expanduser().resolve()).encode()).hexdigest()[:10]
            self.namespace = f"rtml_{digest}"
        return self

    def backend(self, part: str) -> str:
        """The backend type of `part` (`stream`, `offline`, ...: BACKENDS) in this profile."""
        return BACKENDS[self.profile][part]

    @property
    def services(self) -> list[str]:
        """The services this profile's backends use (none in the embedded profile)."""
        return [s for s in SERVICES if s in BACKENDS[self.profile].values()]

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


def without_secrets(url: str) -> str:
    """A service URL with user and password left out: where the service lives, nothing more."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def mask_secrets(url: str) -> str:
    """A service URL with its password shown as `***` (`rtml config`)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    netloc = f"{user}:***@" + parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def read_marker(path: Path) -> dict[str, str] | None:
    """The marker of the data directory at `path`, or None (no marker, or not a regular file)."""
    marker = path / MARKER
    if marker.is_symlink() or not marker.is_file():
        return None
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("profile") not in ("embedded", "services"):
        return None
    if not isinstance(data.get("namespace"), str):
        return None
    return data


def write_marker(path: Path, settings: Settings) -> None:
    """Written atomically: a crash leaves either no marker or a whole one (a temporary file at most)."""
    urls = {"redis": settings.redis_url, "postgres": settings.postgres_dsn}
    services = {s: without_secrets(urls[s]) for s in settings.services} or None
    data = {
        "created_by": "rtml",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "profile": settings.profile,
        "namespace": settings.namespace,
        "services": services,
    }
    tmp = path / f".{MARKER}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path / MARKER)


def get_settings(**overrides: object) -> Settings:
    """Settings from `rtml.toml` and `RTML_...` variables; keyword overrides win."""
    return Settings(**overrides)  # type: ignore[arg-type]


def settings_problem() -> str | None:
    """Why the settings are refused (a bad namespace, a profile the data directory was not
    created for), in one line per problem for the command line; None when they are fine."""
    from pydantic import ValidationError

    try:
        get_settings()
    except ValidationError as exc:
        return "\n".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
    return None
