"""The dashboard: a static page (`/dashboard/`) drawing its charts in the browser from the JSON
endpoints below, with uPlot served from the package (no CDN: the machine may be offline).

Every endpoint reads the pipeline's stores afresh (feature store, prediction log, quality
store, event log, report folder), so the page shows what the whole pipeline does, whichever
process did it. The router's lifespan also adds the pipeline collector to the serving app's
Prometheus registry, so `/metrics` covers every part, not only serving.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Query
from fastapi.responses import FileResponse, RedirectResponse

from rtml.config import Settings
from rtml.monitoring.events import open_event_log
from rtml.quality.reports import DASHBOARD_REPORTS

STATIC = Path(__file__).resolve().parent / "dashboard"
# How far back the page looks for data; charts then show the last `hours` of what exists.
LOOKBACK = timedelta(days=7)
STATIC_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
# The page loads only its own scripts, styles and JSON: an injected <script> or inline handler
# (say, from a crafted event's details) does not run, and no other site may frame the page.
DASHBOARD_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# Evidently reports are pages of inline scripts: they run sandboxed (an opaque origin, no
# access to the dashboard's origin, forms, popups or top navigation), and so do their iframes,
# which inherit the sandbox.
REPORT_CSP = "sandbox allow-scripts; frame-ancestors 'self'"
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


def _epoch_s(values: Any) -> list[int]:
    return [int(v.timestamp()) for v in values]


def _floats(values: Any) -> list[float | None]:
    """JSON numbers, with null for missing (NaN is not JSON)."""
    out: list[float | None] = []
    for v in values:
        f = None if v is None else float(v)
        out.append(None if f is None or math.isnan(f) or math.isinf(f) else round(f, 4))
    return out


def minutes_payload(settings: Settings, hours: float) -> dict[str, Any]:
    from rtml.monitoring.loop import read_minutes

    now = datetime.now(UTC)
    frame = read_minutes(settings, now - LOOKBACK, now + timedelta(minutes=1))
    if not frame.empty:
        frame = frame[frame["minute"] > frame["minute"].max() - timedelta(hours=hours)]
    return {
        "minute": _epoch_s(frame["minute"]),
        "tx_count": _floats(frame["tx_count"]),
        "fee_avg_sat": _floats(frame["fee_avg_sat"]),
    }


def _forecasts_with_actuals(settings: Settings, hours: float) -> Any:
    """The latest logged forecast per target minute in the last `hours`, with the actual (or NaN)."""
    from rtml.monitoring.evaluate import forecasts_frame
    from rtml.monitoring.loop import read_minutes
    from rtml.serving.prediction_log import JUDGED_KINDS, read_predictions

    since = int((time.time() - LOOKBACK.total_seconds()) * 1000)
    # The judged band is the pipeline's own forecasts: a caller's rows never draw in it.
    forecasts = forecasts_frame([r for r in read_predictions(settings, since_ms=since) if r.kind in JUDGED_KINDS])
    if forecasts.empty:
        return forecasts.assign(y=[])
    forecasts = forecasts.drop_duplicates("target_minute", keep="last").sort_values("target_minute")
    forecasts = forecasts[forecasts["target_minute"] > forecasts["target_minute"].max() - timedelta(hours=hours)]
    minutes = read_minutes(settings, forecasts["target_minute"].min(), forecasts["target_minute"].max() + timedelta(minutes=1))
    actual = minutes.set_index("minute")["fee_avg_sat"] if not minutes.empty else None
    forecasts["y"] = forecasts["target_minute"].map(actual) if actual is not None else float("nan")
    return forecasts.reset_index(drop=True)


def forecasts_payload(settings: Settings, hours: float) -> dict[str, Any]:
    frame = _forecasts_with_actuals(settings, hours)
    return {
        "minute": _epoch_s(frame["target_minute"]),
        "p10": _floats(frame["p10"]),
        "p50": _floats(frame["p50"]),
        "p90": _floats(frame["p90"]),
        "actual": _floats(frame["y"]),
        "model_version": [str(v) for v in frame["model_version"]],
    }


def quality_payload(settings: Settings, hours: float) -> dict[str, Any]:
    from rtml.monitoring.evaluate import join_actuals, open_quality_store, sliding_quality
    from rtml.monitoring.loop import read_minutes

    store = open_quality_store(settings)
    try:
        verdicts = store.hours(limit=int(hours))
    finally:
        store.close()
    frame = _forecasts_with_actuals(settings, hours)
    sliding: dict[str, list[Any]] = {"minute": [], "wql": []}
    if not frame.empty:
        minutes = read_minutes(settings, frame["target_minute"].min(), frame["target_minute"].max() + timedelta(minutes=1))
        window = sliding_quality(join_actuals(frame.drop(columns="y"), minutes)) if not minutes.empty else None
        if window is not None and not window.empty:
            sliding = {"minute": _epoch_s(window["target_minute"]), "wql": _floats(window["wql"])}
    events = open_event_log(settings)
    try:
        alarms = events.recent(limit=1, prefix="monitor.alarm")
        promotions = events.recent(limit=1, prefix="model.promoted")
    finally:
        events.close()
    # The alarm stands until a new champion is promoted after it.
    alarm = bool(alarms) and (not promotions or promotions[-1].id < alarms[-1].id)
    return {
        "threshold": settings.monitoring.wql_threshold,
        "breaches_for_alarm": settings.monitoring.breaches_for_alarm,
        "alarm": alarm,
        "hours": {
            "hour": [int(v.hour.timestamp()) for v in verdicts],
            "wql": _floats(v.wql for v in verdicts),
            "mae": _floats(v.mae for v in verdicts),
            "coverage": _floats(v.coverage for v in verdicts),
            "n": [v.n for v in verdicts],
            "model_version": [v.model_version for v in verdicts],
            "breach": [v.breach for v in verdicts],
        },
        "sliding": sliding,
    }


def models_payload(settings: Settings) -> dict[str, Any]:
    """Champion version over time (each promotion) and rejected candidates, from the event log."""
    from rtml.monitoring.loop import champion_version

    events = open_event_log(settings)
    try:
        decisions = [e for e in events.recent(limit=500, prefix="model.") if e.kind in ("model.promoted", "model.rejected")]
    finally:
        events.close()
    times: list[int] = []
    champion: list[float | None] = []
    rejected: list[float | None] = []
    current: float | None = None
    for event in decisions:
        version = _version_number(event.details.get("version"))
        times.append(event.time_ms // 1000)
        if event.kind == "model.promoted":
            current = version
            champion.append(version)
            rejected.append(None)
        else:
            champion.append(current)
            rejected.append(version)
    now_version = champion_version(settings)
    if now_version is not None:
        # Extend the step line to now, so the champion's reign is visible.
        times.append(int(time.time()))
        champion.append(_version_number(now_version))
        rejected.append(None)
    return {"time": times, "champion_version": champion, "rejected_version": rejected, "champion": now_version}


def _version_number(version: Any) -> float | None:
    try:
        return float(version)
    except (TypeError, ValueError):
        return None


def drift_payload(settings: Settings) -> dict[str, Any]:
    events = open_event_log(settings)
    try:
        checks = [e for e in events.recent(limit=500, prefix="drift.") if "share" in e.details]
    finally:
        events.close()
    reports_dir = settings.root / "reports"
    files = sorted(reports_dir.rglob("*.html"), key=lambda p: p.stat().st_mtime, reverse=True) if reports_dir.is_dir() else []
    reports = [
        {"name": str(p.relative_to(reports_dir)), "url": f"reports/{p.relative_to(reports_dir).as_posix()}", "time": int(p.stat().st_mtime)}
        for p in files[:DASHBOARD_REPORTS]
    ]
    status = "unknown" if not checks else ("alert" if checks[-1].kind == "drift.alert" else "ok")
    return {
        "time": [e.time_ms // 1000 for e in checks],
        "share": _floats(e.details["share"] for e in checks),
        "threshold": settings.drift.drift_share,
        "status": status,
        "reports": reports,
    }


def build_router(settings: Settings) -> APIRouter:
    """The dashboard page, its JSON endpoints, the report files, and the pipeline's metrics."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from rtml.monitoring.metrics import PipelineCollector

        # The serving app's own registry (see rtml.serving.middleware.ServingMetrics) serves /metrics.
        registry = app.state.serving.metrics.registry
        collector = PipelineCollector(settings)
        registry.register(collector)
        try:
            yield
        finally:
            registry.unregister(collector)

    router = APIRouter(prefix="/dashboard", tags=["dashboard"], lifespan=lifespan)

    @router.get("", include_in_schema=False)
    def page_redirect() -> RedirectResponse:
        return RedirectResponse("/dashboard/")

    @router.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(
            STATIC / "index.html",
            headers={"Cache-Control": "no-cache", "Content-Security-Policy": DASHBOARD_CSP, **SECURITY_HEADERS},
        )

    @router.get("/static/{path:path}", include_in_schema=False)
    def static(path: str) -> FileResponse:
        target = (STATIC / path).resolve()
        if not target.is_file() or not target.is_relative_to(STATIC):
            raise HTTPException(404, f"no dashboard file {path!r}")
        return FileResponse(target, media_type=STATIC_TYPES.get(target.suffix), headers=SECURITY_HEADERS)

    @router.get("/reports/{path:path}", summary="An Evidently report under <data_dir>/reports")
    def report(path: str) -> FileResponse:
        base = (settings.root / "reports").resolve()
        target = (base / path).resolve()
        if not target.is_file() or not target.is_relative_to(base):
            raise HTTPException(404, f"no report {path!r}")
        return FileResponse(target, headers={"Content-Security-Policy": REPORT_CSP, **SECURITY_HEADERS})

    @router.get("/api/minutes", summary="Per-minute transaction count and average fee")
    def minutes(hours: float = Query(6, gt=0, le=168)) -> dict[str, Any]:
        return minutes_payload(settings, hours)

    @router.get("/api/forecasts", summary="Logged P10/P50/P90 per target minute with the actual")
    def forecasts(hours: float = Query(6, gt=0, le=168)) -> dict[str, Any]:
        return forecasts_payload(settings, hours)

    @router.get("/api/quality", summary="Judged hours (wQL, MAE, coverage, breach) and the sliding wQL")
    def quality(hours: float = Query(48, gt=0, le=24 * 30)) -> dict[str, Any]:
        return quality_payload(settings, hours)

    @router.get("/api/models", summary="Champion versions over time and rejected candidates")
    def models() -> dict[str, Any]:
        return models_payload(settings)

    @router.get("/api/drift", summary="Drift checks (drifted share) and links to the Evidently reports")
    def drift() -> dict[str, Any]:
        return drift_payload(settings)

    @router.get("/api/events", summary="The pipeline's event log, newest last")
    def events(
        limit: int = Query(200, ge=1, le=5000),
        prefix: str = Query("", max_length=100),
        after_id: int = Query(0, ge=0, le=2**63 - 1),  # an event id is a SQLite / BIGINT integer
    ) -> list[dict[str, Any]]:
        log = open_event_log(settings)
        try:
            return [
                {"id": e.id, "time_ms": e.time_ms, "kind": e.kind, "details": e.details}
                for e in log.recent(limit=limit, prefix=prefix, after_id=after_id)
            ]
        finally:
            log.close()

    return router
