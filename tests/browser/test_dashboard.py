"""The dashboard in headless Chromium, served by a real uvicorn over real pipeline data.

Data: minutes in the feature store (a calm regime, then a swinging one), a champion trained by
the real training code and registered in MLflow, its forecasts logged by the pipeline's forecaster, the monitoring pass judging the hours (two breaches), and a real Evidently drift
check with its report. The test waits for the page's first refresh and
checks that every chart drew points and the report link opens.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import httpx
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rtml.config import Settings
from rtml.features.writer import FeatureStoreSink
from rtml.model import registry
from rtml.model.train import train
from rtml.monitoring.loop import run_monitoring_pass
from rtml.monitoring.scenario import swinging_fee_minutes
from rtml.pipeline import serving_app
from rtml.quality.drift import run_drift_check
from rtml.quality.results import TimeRange
from rtml.serving.server import BackgroundServer

CALM_HOURS, SWING_HOURS = 4, 2
CHARTS = ("traffic", "forecast", "quality", "models", "drift")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.mark.browser
def test_dashboard_draws_every_chart(settings: Settings, chromium: str, artifacts_dir: Path, log_pipeline_forecasts: Callable[..., int]) -> None:
    from playwright.sync_api import sync_playwright

    # Minutes up to the last whole hour, so the page (which shows recent data) has them all.
    start = pd.Timestamp.now(tz="UTC").floor("h") - pd.Timedelta(hours=CALM_HOURS + SWING_HOURS)
    minutes = swinging_fee_minutes(start, CALM_HOURS, SWING_HOURS)
    sink = FeatureStoreSink(settings)
    sink.write_frame(minutes)
    sink.close()
    shift = start + pd.Timedelta(hours=CALM_HOURS)
    first = train(settings, minutes=minutes[minutes["minute"] < shift])
    if not first.promoted:
        registry.promote(settings, first.version, reason="test: first champion")
    end = minutes["minute"].max().to_pydatetime() + timedelta(minutes=1)

    server = BackgroundServer(serving_app(settings)).start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            sent = log_pipeline_forecasts(settings, minutes, shift - pd.Timedelta(hours=1), pd.Timestamp(end))
            # Two breaches, no alarm yet; then the hourly drift check sees the new regime.
            report = run_monitoring_pass(settings)
            assert [v["breach"] for v in report.judged] == [False, True, True] and report.trigger is None
            drift = run_drift_check(settings, TimeRange(start.to_pydatetime(), shift.to_pydatetime()), TimeRange(end - timedelta(hours=1), end))
            metrics = {
                (sample.name, tuple(sorted(sample.labels.items()))): sample.value
                for family in text_string_to_metric_families(client.get("/metrics").text)
                for sample in family.samples
            }
            last_hour = report.judged[-1]
            version = (("model_version", first.version),)
            assert metrics[("rtml_forecast_wql", version)] == pytest.approx(last_hour["wql"])
            assert metrics[("rtml_model_version", (("version", first.version),))] == float(first.version)
            assert metrics[("rtml_drift_share", ())] == pytest.approx(drift.share) and drift.drifted
            assert 0 <= metrics[("rtml_feature_freshness_seconds", ())] < 2 * 3600
            assert metrics[("rtml_forecast_latency_seconds", (("quantile", "0.5"),))] > 0
            for part in ("ingest", "aggregate", "quality", "serving"):
                assert metrics[("rtml_part_up", (("part", part),))] == 1.0, part

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            # Everything the Content-Security-Policy blocks is recorded: the page must need none of it.
            page.add_init_script(
                "window.cspViolations = [];"
                "document.addEventListener('securitypolicyviolation',"
                " e => window.cspViolations.push(e.violatedDirective + ' ' + e.blockedURI));"
            )
            answer = page.goto(f"{server.url}/dashboard/")
            assert answer is not None and "script-src 'self'" in answer.headers["content-security-policy"]
            page.wait_for_function("() => window.rtmlDashboard && window.rtmlDashboard.refreshes > 0", timeout=60_000)
            state = page.evaluate("({points: window.rtmlDashboard.points, errors: window.rtmlDashboard.errors})")
            assert state["errors"] == []
            assert page.evaluate("window.cspViolations") == []
            for chart in CHARTS:
                assert state["points"].get(chart, 0) > 0, (chart, state)
                # uPlot drew on a canvas of the chart's size.
                assert page.locator(f"#chart-{chart} canvas").count() == 1
            assert state["points"]["forecast"] >= 4 * sent // 2  # P10, P50, P90 and the actual per minute
            assert state["points"]["events"] > 0
            kinds = page.locator("#events td.kind").all_inner_texts()
            for kind in ("monitor.breach", "model.gate", "model.promoted", "drift.alert"):
                assert kind in kinds, kind
            assert page.locator("#champion").inner_text() == f"champion v{first.version}"
            assert page.locator("#drift-status").inner_text() == "drift: alert"
            assert page.locator("#alarm-status").inner_text() == f"last hour wQL {last_hour['wql']:.2f} > 0.24"
            page.screenshot(path=str(artifacts_dir / "dashboard.png"), full_page=True)
            link = page.locator("#drift-reports a").first
            report_page = httpx.get(f"{server.url}/dashboard/{link.get_attribute('href')}", timeout=30)
            assert report_page.status_code == 200 and "<html" in report_page.text[:2000].lower()
            # The report and its Evidently iframes run sandboxed: an opaque origin, not the API's.
            viewer = browser.new_page()
            viewer.goto(f"{server.url}/dashboard/{link.get_attribute('href')}")
            assert viewer.evaluate("window.origin") == "null"
            assert len(viewer.frames) > 1 and all(f.evaluate("window.origin") == "null" for f in viewer.frames)
            browser.close()
    finally:
        server.stop()
