"""The forecast API's request and response bodies, with the bounds it enforces on every input.

Every time and size a caller sends is bounded here, before a handler runs: a time outside these
bounds overflowed date arithmetic downstream, or poisoned what monitoring reads. What only the
running service knows (the model's feature columns, how many minutes a what-if needs) is added
to the OpenAPI schema by `add_request_rules`.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from rtml.contracts import Forecast

MAX_TX_PER_MINUTE = 10_000_000
MAX_SATOSHI = 2_100_000_000_000_000  # every bitcoin there will ever be
# Request times: not before Bitcoin's genesis block, not more than a day ahead of now (a time
# outside these overflowed date arithmetic downstream, or poisoned what monitoring reads).
EARLIEST = datetime(2009, 1, 3, tzinfo=UTC)
MAX_AHEAD = timedelta(days=1)


def _minute_schema(schema: dict[str, Any]) -> None:
    """State the time bounds in the OpenAPI schema, so clients (schemathesis) see what the code
    enforces: a whole minute, with a zone, in a year from 2009 to the year a day from now."""
    last_year = (datetime.now(UTC) + MAX_AHEAD).year
    years = "|".join(str(y) for y in range(EARLIEST.year, last_year + 1))
    schema["pattern"] = (
        rf"^({years})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:00(\.0+)?"
        r"(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
    )
    schema["description"] = (
        f"{schema.get('description', '')} Not before {EARLIEST:%Y-%m-%d}, not more than a day after now."
    ).strip()


def _bounded_minute(value: datetime) -> datetime:
    """A whole minute between the genesis block and a day from now, in UTC."""
    if value.second or value.microsecond:
        raise ValueError(f"minute must be the start of a minute (seconds = 0), got {value.isoformat()}")
    value = value.astimezone(UTC)
    if value < EARLIEST:
        raise ValueError(f"minute must not be before {EARLIEST.date()} (the genesis block), got {value.isoformat()}")
    latest = datetime.now(UTC) + MAX_AHEAD
    if value > latest:
        raise ValueError(f"minute must not be more than a day after now ({latest.isoformat(timespec='seconds')}), got {value.isoformat()}")
    return value


class MinuteIn(BaseModel):
    """One closed minute, as the aggregation engine emits it (MinuteFeatures)."""

    model_config = ConfigDict(extra="forbid")

    minute: AwareDatetime = Field(
        description="Start of the minute, with a time zone (UTC preferred).", json_schema_extra=_minute_schema
    )
    tx_count: int = Field(ge=0, le=MAX_TX_PER_MINUTE)
    fee_total_sat: int = Field(ge=0, le=MAX_SATOSHI)
    fee_avg_sat: float | None = Field(
        default=None,
        ge=0,
        allow_inf_nan=False,
        description="fee_total_sat / tx_count; null when tx_count = 0. Derived when omitted.",
    )

    @field_validator("minute")
    @classmethod
    def _whole_minute(cls, value: datetime) -> datetime:
        return _bounded_minute(value)

    @model_validator(mode="after")
    def _consistent_average(self) -> MinuteIn:
        if self.tx_count == 0:
            if self.fee_total_sat:
                raise ValueError("tx_count is 0 but fee_total_sat is not")
            if self.fee_avg_sat is not None:
                raise ValueError("fee_avg_sat must be null when tx_count is 0")
            return self
        average = self.fee_total_sat / self.tx_count
        if self.fee_avg_sat is None:
            self.fee_avg_sat = average
        elif not math.isclose(self.fee_avg_sat, average, rel_tol=1e-6, abs_tol=1e-6):
            raise ValueError(f"fee_avg_sat {self.fee_avg_sat} is not fee_total_sat / tx_count = {average}")
        return self


class FeatureRowIn(BaseModel):
    """A ready model-input row (as the ETL builds them), for batch scoring."""

    model_config = ConfigDict(extra="forbid")

    minute: AwareDatetime = Field(
        description="Start of the last closed minute these features describe.", json_schema_extra=_minute_schema
    )
    # No feature (counts, satoshi amounts, their means and spreads) can exceed every bitcoin.
    features: dict[str, Annotated[float, Field(allow_inf_nan=False, ge=-MAX_SATOSHI, le=MAX_SATOSHI)] | None] = Field(
        description="Every model input column (see GET /model), null for missing values."
    )

    @field_validator("minute")
    @classmethod
    def _whole_minute(cls, value: datetime) -> datetime:
        return _bounded_minute(value)


class ForecastRequest(BaseModel):
    """Either `minutes` (what-if: forecast from these minutes) or `rows` (batch), not both."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "minutes": [
                        {"minute": "2024-10-01T12:00:00Z", "tx_count": 150, "fee_total_sat": 600000},
                        {"minute": "2024-10-01T12:01:00Z", "tx_count": 140, "fee_total_sat": 590000},
                    ]
                }
            ]
        },
    )

    minutes: list[MinuteIn] | None = Field(
        default=None,
        min_length=1,
        max_length=1440,
        description="Consecutive closed minutes, oldest first; the forecast is for 5 minutes after the last.",
    )
    rows: list[FeatureRowIn] | None = Field(default=None, min_length=1, max_length=1000)

    @model_validator(mode="after")
    def _one_kind(self) -> ForecastRequest:
        if (self.minutes is None) == (self.rows is None):
            raise ValueError("give exactly one of 'minutes' (what-if) or 'rows' (batch)")
        if self.minutes:
            for i, (before, after) in enumerate(zip(self.minutes, self.minutes[1:], strict=False)):
                if after.minute - before.minute != timedelta(minutes=1):
                    raise ValueError(
                        f"minutes must be consecutive and oldest first: minutes[{i + 1}] is "
                        f"{after.minute.isoformat()}, expected {(before.minute + timedelta(minutes=1)).isoformat()}"
                    )
        return self


class ForecastBatch(BaseModel):
    forecasts: list[Forecast]


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    ready: bool
    model_version: str | None
    feature_time: datetime | None = Field(description="End of the newest closed minute in the online store.")
    reasons: list[str] = Field(description="Why the service is not ready; empty when it is.")


class ModelInfo(BaseModel):
    version: str
    kind: Literal["model", "baseline"] = Field(
        default="model", description="`baseline`: the calibrated baseline a pipeline starts with, until a model passes the gate."
    )
    loaded_at: datetime
    training_start: datetime | None = None
    training_end: datetime | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    features: list[str]
    details: dict[str, Any] = Field(default_factory=dict, description="Everything else the registry records.")


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str = Field(pattern=r"^[1-9][0-9]{0,8}$", description="A registered version of fee_forecaster.")


class AdminResult(BaseModel):
    champion: str = Field(description="The version the registry's champion alias names now.")
    serving: str | None = Field(description="The version this replica serves now.")


class ErrorBody(BaseModel):
    detail: str


def add_request_rules(schema: dict[str, Any], columns: list[str], min_minutes: int) -> None:
    """Make the generated `schema` state what the service checks once its model is known: every
    feature column required and bounded, at least `min_minutes` minutes for a what-if."""
    components = schema["components"]["schemas"]
    features = components["FeatureRowIn"]["properties"]["features"]
    value = features.pop("additionalProperties")
    features.update(properties={c: value for c in columns}, required=columns, additionalProperties=False)
    request = components["ForecastRequest"]
    for option in request["properties"]["minutes"]["anyOf"]:
        if option.get("type") == "array":
            option["minItems"] = min_minutes
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=min_minutes + 10)
    request["examples"] = [
        {"rows": [{"minute": f"{start:%Y-%m-%dT%H:%M:00Z}", "features": {c: 1.0 for c in columns}}]},
        {
            "minutes": [
                {"minute": f"{start + timedelta(minutes=i):%Y-%m-%dT%H:%M:00Z}", "tx_count": 150, "fee_total_sat": 600000}
                for i in range(min_minutes)
            ]
        },
    ]
