"""The forecast API: FastAPI over the online feature store and the registry's champion.

`create_app(settings)` builds the app; the real feature store and registry are opened in the
lifespan (so building the app is cheap), or given as `features=` / `models=` objects that
follow the small interfaces in `sources.py` and `swap.py`. Other parts add pages and
endpoints through `routers=` (the composition root, `rtml.pipeline.serving_app`, adds the
monitoring dashboard): their handlers reach the running service through
`request.app.state.serving` (a `ServingState`). The bodies are in `schemas.py`, the
metrics and middleware in `middleware.py`, a server in a thread in `server.py`.
"""

from __future__ import annotations

import asyncio
import gc
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from rtml.config import Settings, get_settings
from rtml.contracts import Forecast, datetime_to_ms
from rtml.serving.middleware import Guard, Instrument, ServingMetrics
from rtml.serving.prediction_log import PredictionLog, PredictionRecord
from rtml.serving.schemas import (
    AdminResult,
    ErrorBody,
    ForecastBatch,
    ForecastRequest,
    Health,
    ModelInfo,
    PromoteRequest,
    Readiness,
    add_request_rules,
)
from rtml.serving.sources import FeatureBatch, FeatureSource, NoFeatures
from rtml.serving.swap import Loaded, ModelSource, ModelWatcher

if TYPE_CHECKING:
    from fastapi import APIRouter


@dataclass
class ServingState:
    """Everything a handler needs; `request.app.state.serving`."""

    settings: Settings
    features: FeatureSource
    watcher: ModelWatcher
    log: PredictionLog
    metrics: ServingMetrics
    # The last online forecast's (model, feature batch, quantiles): while neither changed (a new
    # minute closes once a minute), the same deterministic prediction is not recomputed.
    memo: tuple[Loaded, FeatureBatch, Any] | None = None


def _state(request: Request) -> ServingState:
    return request.app.state.serving  # type: ignore[no-any-return]


def _error(status: int, detail: str) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorBody, "description": detail}}


def _unprocessable(loc: Sequence[str | int], msg: str) -> RequestValidationError:
    """A 422 in FastAPI's own format, for checks that need the feature definitions."""
    return RequestValidationError([{"type": "value_error", "loc": ("body", *loc), "msg": msg, "input": None}])


def _default_sources(settings: Settings) -> tuple[FeatureSource, ModelSource]:
    from rtml.serving.real import RegistryModelSource, StoreFeatureSource

    return StoreFeatureSource(settings), RegistryModelSource(settings)


def create_app(
    settings: Settings | None = None,
    *,
    features: FeatureSource | None = None,
    models: ModelSource | None = None,
    routers: Sequence[APIRouter] = (),
    poll_s: float = 1.0,
) -> FastAPI:
    """The forecast API. Real feature store and registry unless `features` / `models` are given."""
    settings = settings or get_settings()
    metrics = ServingMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        feature_source, model_source = features, models
        if feature_source is None or model_source is None:
            real_features, real_models = await asyncio.to_thread(_default_sources, settings)
            feature_source = feature_source or real_features
            model_source = model_source or real_models
        prediction_log = PredictionLog(settings)

        def on_swap(old: Loaded | None, new: Loaded) -> None:
            metrics.swaps.inc()
            metrics.model_version.set(float(new.version) if new.version.isdigit() else -1)
            prediction_log.count("model_swaps")

        def on_error(exc: Exception) -> None:
            metrics.poll_errors.inc()
            prediction_log.count("registry_errors")

        watcher = ModelWatcher(model_source, poll_s=poll_s, on_swap=on_swap, on_error=on_error)
        await asyncio.to_thread(watcher.refresh)
        watcher.start()
        app.state.serving = ServingState(settings, feature_source, watcher, prediction_log, metrics)
        # Everything loaded so far (Feast, MLflow, pandas: millions of objects) lives as long as
        # the process; moved out of the collector's view, a full collection no longer walks it,
        # which takes tens of milliseconds out of the slowest requests.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            watcher.stop()
            prediction_log.close()
            close = getattr(feature_source, "close", None)
            if close is not None:
                close()

    app = FastAPI(
        title="rtml forecast API",
        version="1",
        description=(
            "P10/P50/P90 forecasts of the average Bitcoin transaction fee (satoshi) for the minute "
            f"{settings.model.horizon_min} minutes after the last closed minute, from the registry's "
            "champion model. Every response names the model version that produced it."
        ),
        lifespan=lifespan,
    )
    # Added last = outermost: refused hosts and bodies are counted and timed too.
    app.add_middleware(Guard, hosts=settings.serving.hosts(), max_body_bytes=settings.serving.max_body_bytes)
    app.add_middleware(Instrument, metrics=metrics)
    generic_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        """The generated schema plus what only the running service knows: the model's feature
        columns (each required, bounded) and how many minutes a what-if needs."""
        if app.openapi_schema is None:
            schema = generic_openapi()
            state = getattr(app.state, "serving", None)
            if state is None:  # asked before the lifespan ran: do not cache a partial schema
                app.openapi_schema = None
                return schema
            add_request_rules(schema, list(state.features.columns), state.features.min_minutes)
            return schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(NoFeatures)
    async def no_features(request: Request, exc: NoFeatures) -> JSONResponse:
        return JSONResponse({"detail": f"no online features: {exc}"}, status_code=503)

    def serve(state: ServingState, batch: FeatureBatch, kind: str, started: float) -> list[Forecast]:
        loaded = state.watcher.current  # read once: this request finishes on this model
        if loaded is None:
            raise HTTPException(503, f"no champion model loaded ({state.watcher.last_error or 'registry has none'})")
        memo = state.memo
        if memo is not None and memo[0] is loaded and memo[1] is batch:
            quantiles = memo[2]
        else:
            quantiles = loaded.model.predict(batch.values)
            if not np.isfinite(quantiles).all():
                raise HTTPException(
                    503 if kind == "online" else 422, "the model gives no finite forecast for these features"
                )
            if kind == "online":
                state.memo = (loaded, batch, quantiles)
        horizon = state.settings.model.horizon_min
        latency_ms = (time.perf_counter() - started) * 1000
        logged_ms = int(time.time() * 1000)
        forecasts = []
        for i, last_minute in enumerate(batch.last_minutes):
            p10, p50, p90 = (float(q) for q in quantiles[i])
            forecast = Forecast(
                target_minute=last_minute + timedelta(minutes=horizon),
                p10=p10,
                p50=p50,
                p90=p90,
                model_version=loaded.version,
                feature_time=batch.feature_time(i),
                horizon_min=horizon,
            )
            state.log.record(
                PredictionRecord(
                    logged_ms,
                    loaded.version,
                    datetime_to_ms(forecast.feature_time),
                    datetime_to_ms(forecast.target_minute),
                    p10,
                    p50,
                    p90,
                    latency_ms,
                    kind,
                )
            )
            forecasts.append(forecast)
        state.metrics.forecasts.labels(kind).inc(len(forecasts))
        state.log.count(f"forecasts_{kind}", len(forecasts))
        return forecasts

    # Handlers that read the online store are async: they all run on the event loop thread, so
    # the store's connections are never used from two threads at once. POST /forecast touches
    # no store and may compute features for milliseconds: it runs in the thread pool, beside
    # the loop (LightGBM predicts under a shared lock, the log and metrics are thread-safe).
    @app.get(
        "/forecast",
        response_model=Forecast,
        tags=["forecast"],
        summary="Forecast from the online feature store",
        responses=_error(503, "No model loaded, no online features, or features older than the allowed age."),
    )
    async def get_forecast(request: Request) -> Forecast:
        """Reads the newest minutes from the online store; refuses (503) when they are stale."""
        started = time.perf_counter()
        state = _state(request)
        batch = state.features.latest()
        age_s = (datetime.now(UTC) - batch.feature_time(0)).total_seconds()
        state.metrics.feature_age.set(age_s)
        max_age = state.settings.serving.max_feature_age_s
        if age_s > max_age:
            state.metrics.stale.inc()
            state.log.count("stale_refusals")
            raise HTTPException(
                503,
                f"features are stale: the newest closed minute ended at {batch.feature_time(0).isoformat()}, "
                f"{age_s:.0f} s ago, more than serving.max_feature_age_s = {max_age:g} s; no forecast on old data",
            )
        return serve(state, batch, "online", started)[0]

    @app.post(
        "/forecast",
        response_model=ForecastBatch,
        tags=["forecast"],
        summary="Forecast from features given in the body (what-if, batch)",
        responses=_error(503, "No model loaded."),
    )
    def post_forecast(body: ForecastRequest, request: Request) -> ForecastBatch:
        """`minutes`: one forecast from these minutes, as if they were the newest. `rows`: one per row."""
        started = time.perf_counter()
        state = _state(request)
        source = state.features
        if body.minutes is not None:
            if len(body.minutes) < source.min_minutes:
                raise _unprocessable(
                    ("minutes",), f"need at least {source.min_minutes} consecutive minutes, got {len(body.minutes)}"
                )
            frame = pd.DataFrame([m.model_dump() for m in body.minutes])
            return ForecastBatch(forecasts=serve(state, source.from_minutes(frame), "what-if", started))
        assert body.rows is not None
        columns = list(source.columns)
        expected = set(columns)
        for i, row in enumerate(body.rows):
            missing = [c for c in columns if c not in row.features]
            unknown = sorted(set(row.features) - expected)
            if missing or unknown:
                parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
                    [f"unknown {', '.join(unknown)}"] if unknown else []
                )
                raise _unprocessable(("rows", i, "features"), "; ".join(parts))
        values = pd.DataFrame([[r.features[c] for c in columns] for r in body.rows], columns=columns, dtype=float)
        batch = FeatureBatch([r.minute for r in body.rows], values)
        return ForecastBatch(forecasts=serve(state, batch, "batch", started))

    @app.get("/health", response_model=Health, tags=["service"], summary="The process answers")
    async def health() -> Health:
        return Health()

    @app.get(
        "/ready",
        response_model=Readiness,
        tags=["service"],
        summary="Model and fresh features loaded",
        responses={503: {"model": Readiness, "description": "Not ready; `reasons` says why."}},
    )
    async def ready(request: Request) -> Any:
        state = _state(request)
        loaded = state.watcher.current
        reasons = []
        if loaded is None:
            reasons.append(f"no champion model loaded ({state.watcher.last_error or 'registry has none'})")
        feature_time = None
        try:
            feature_time = state.features.latest().feature_time(0)
        except NoFeatures as exc:
            reasons.append(f"no online features: {exc}")
        else:
            age_s = (datetime.now(UTC) - feature_time).total_seconds()
            if age_s > state.settings.serving.max_feature_age_s:
                reasons.append(f"features are stale: newest minute ended {age_s:.0f} s ago")
        body = Readiness(
            ready=not reasons, model_version=loaded.version if loaded else None, feature_time=feature_time, reasons=reasons
        )
        if reasons:
            return JSONResponse(body.model_dump(mode="json"), status_code=503)
        return body

    @app.get(
        "/model",
        response_model=ModelInfo,
        tags=["service"],
        summary="The model being served: version, training window, metrics",
        responses=_error(503, "No model loaded."),
    )
    async def model(request: Request) -> ModelInfo:
        state = _state(request)
        loaded = state.watcher.current
        if loaded is None:
            raise HTTPException(503, f"no champion model loaded ({state.watcher.last_error or 'registry has none'})")
        info = dict(loaded.info)
        return ModelInfo(
            version=loaded.version,
            kind=info.pop("kind", "model"),
            loaded_at=datetime.fromtimestamp(loaded.loaded_at, UTC),
            training_start=info.pop("training_start", None),
            training_end=info.pop("training_end", None),
            metrics=info.pop("metrics", {}),
            features=list(state.features.columns),
            details=info,
        )

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        tags=["service"],
        summary="Prometheus metrics",
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
    )
    async def prometheus() -> PlainTextResponse:
        # The pipeline collector reads stores (milliseconds to seconds): in a worker thread, so
        # a scrape never holds up the forecasts the event loop is answering.
        page = await asyncio.to_thread(generate_latest, metrics.registry)
        return PlainTextResponse(page, media_type=CONTENT_TYPE_LATEST)

    bearer = HTTPBearer(auto_error=False, description="serving.admin_token (RTML_SERVING__ADMIN_TOKEN)")

    def require_admin(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        token = settings.serving.admin_token
        if not token:
            raise HTTPException(
                404, "admin endpoints are off: set serving.admin_token (RTML_SERVING__ADMIN_TOKEN) to enable them"
            )
        if credentials is None:
            raise HTTPException(
                401, "admin endpoints need the header 'Authorization: Bearer <token>'", {"WWW-Authenticate": "Bearer"}
            )
        if not secrets.compare_digest(credentials.credentials.encode(), token.encode()):
            raise HTTPException(403, "wrong admin token")

    admin_errors: dict[int | str, dict[str, Any]] = {
        **_error(401, "No bearer token given."),
        **_error(403, "Wrong bearer token."),
        **_error(404, "Admin endpoints are off (no serving.admin_token), or the version does not exist."),
        **_error(409, "The registry refused (e.g. no previous champion to roll back to)."),
    }

    def admin_change(request: Request, change: Callable[[], str]) -> AdminResult:
        state = _state(request)
        try:
            champion = change()
        except LookupError as exc:
            raise HTTPException(404, str(exc)) from exc
        except ValueError as exc:
            raise HTTPException(409, str(exc)) from exc
        loaded = state.watcher.refresh()  # serve the new champion before answering
        return AdminResult(champion=champion, serving=loaded.version if loaded else None)

    @app.post(
        "/admin/promote",
        response_model=AdminResult,
        tags=["admin"],
        summary="Make a registered version champion",
        dependencies=[Depends(require_admin)],
        responses=admin_errors,
    )
    def promote(body: PromoteRequest, request: Request) -> AdminResult:
        return admin_change(request, lambda: _state(request).watcher.source.promote(body.version))

    @app.post(
        "/admin/rollback",
        response_model=AdminResult,
        tags=["admin"],
        summary="Give champion back to the previous version",
        dependencies=[Depends(require_admin)],
        responses=admin_errors,
    )
    def rollback(request: Request) -> AdminResult:
        return admin_change(request, lambda: _state(request).watcher.source.rollback())

    for router in routers:
        app.include_router(router)
    return app
