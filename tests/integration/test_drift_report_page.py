"""The report people look at: opened offline in a real browser, verdict first, Evidently inside."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rtml.config import Settings
from rtml.quality import reports
from rtml.quality.drift import drift_report
from rtml.quality.rules import freshness, tx_count_band

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


@pytest.mark.browser
def test_report_renders_offline_with_verdict_rules_and_evidently(
    settings: Settings, chromium: str, artifacts_dir: Path
) -> None:
    from playwright.sync_api import sync_playwright

    rng = np.random.default_rng(0)
    ref = pd.DataFrame({"tx_count": rng.poisson(145, 1440), "fee_avg_sat": rng.lognormal(8.3, 0.3, 1440)})
    cur = pd.DataFrame({"tx_count": rng.poisson(145, 60), "fee_avg_sat": rng.lognormal(8.3 + 1.13, 0.3, 60)})
    result = drift_report(ref, cur, columns=["tx_count", "fee_avg_sat"])
    now = pd.Timestamp("2024-10-02T12:00Z").to_pydatetime()
    result.rules = [freshness(now, now), tx_count_band([0] * 60)]
    reports.write_report(settings, result, kind="drift", now=now)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1300, "height": 1000})
        blocked: list[str] = []
        page.route("http*://**", lambda route: (blocked.append(route.request.url), route.abort()))
        page.goto(Path(result.html_path or "").as_uri())
        assert page.locator("p b").first.inner_text() == "drift"
        rows = page.locator("table").first.locator("tr").all_inner_texts()
        assert any(r.startswith("fee_avg_sat") and "drift" in r for r in rows)
        assert any(r.startswith("tx_count") and "ok" in r for r in rows)
        statuses = page.locator("table").nth(1).locator("tr td:nth-child(2)").all_inner_texts()
        assert statuses == ["pass", "fail"]
        frame = page.frame_locator("iframe").first
        frame.get_by_text("Dataset Drift").first.wait_for(
            timeout=60_000
        )  # Evidently's page rendered, offline
        page.screenshot(path=str(artifacts_dir / "drift-report.png"), full_page=False)
        browser.close()
    assert blocked == []  # self-contained: nothing was fetched from the network
