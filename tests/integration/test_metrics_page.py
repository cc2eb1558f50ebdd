"""`/metrics` as Prometheus sees it: a real page from the serving bed, checked by promtool; the
pipeline collector off the event loop and cached per scrape interval."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from conftest import SERVING_TOKEN

from rtml.config import Settings
from rtml.monitoring.metrics import PipelineCollector
from rtml.pipeline import serving_app
from rtml.serving.server import BackgroundServer

CALLS: list[float] = []


def slow_counters(settings: Settings) -> dict[str, float]:
    """A part whose store takes a second to answer (a remote database under load)."""
    CALLS.append(time.monotonic())
    time.sleep(1.0)
    return {"reads": float(len(CALLS))}


@pytest.fixture(scope="module")
def server(bed: tuple[Settings, list[str]]) -> Iterator[BackgroundServer]:
    server = BackgroundServer(serving_app(bed[0], poll_s=0.2)).start()
    yield server
    server.stop()


def test_promtool_accepts_the_whole_page(
    bed: tuple[Settings, list[str]], server: BackgroundServer, promtool: str
) -> None:
    """Every kind of sample present (a swap counted in-process and persisted, forecasts of two
    kinds, a stale-free read): one HELP and TYPE per name, or a real scrape fails."""
    settings, versions = bed
    auth = {"Authorization": f"Bearer {SERVING_TOKEN}"}
    with httpx.Client(base_url=server.url, timeout=30) as http:
        assert http.get("/forecast").status_code == 200
        columns = http.get("/model").json()["features"]
        row = {"minute": f"{datetime.now(UTC):%Y-%m-%dT%H:%M:00Z}", "features": dict.fromkeys(columns, 1.0)}
        assert http.post("/forecast", json={"rows": [row]}).status_code == 200
        try:
            assert http.post("/admin/promote", json={"version": versions[1]}, headers=auth).status_code == 200
        finally:
            assert http.post("/admin/promote", json={"version": versions[0]}, headers=auth).status_code == 200
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the persisted counters are written by a thread
            page = http.get("/metrics").text
            if "rtml_serving_recorded_model_swaps_total" in page:
                break
            time.sleep(0.2)
    names = [line.split()[2] for line in page.splitlines() if line.startswith("# HELP ")]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    assert "rtml_serving_model_swaps_total" in names and "rtml_serving_recorded_model_swaps_total" in names
    assert "rtml_forecast_latency_seconds" in names  # the pipeline's part of the page is there
    out = subprocess.run([promtool, "check", "metrics"], input=page, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_slow_store_neither_stalls_forecasts_nor_is_read_on_every_scrape(
    bed: tuple[Settings, list[str]], server: BackgroundServer
) -> None:
    settings = bed[0]
    app = server._server.config.app
    registry = app.state.serving.metrics.registry
    collector = PipelineCollector(settings, sources={"slow": slow_counters}, max_age_s=30)
    registry.register(collector)
    CALLS.clear()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            scrape = threading.Thread(target=lambda: http.get("/metrics"))
            scrape.start()
            deadline = time.monotonic() + 10
            while not CALLS and time.monotonic() < deadline:  # the scrape is inside the slow store
                time.sleep(0.01)
            assert CALLS
            started = time.perf_counter()
            assert http.get("/forecast").status_code == 200
            answered_in = time.perf_counter() - started
            scrape.join()
            assert answered_in < 0.5, f"a forecast waited {answered_in:.2f} s behind a scrape"
            page = http.get("/metrics").text  # within max_age_s: the cached read
            assert "rtml_slow_reads_total 1.0" in page
            assert len(CALLS) == 1
    finally:
        registry.unregister(collector)


def test_the_pipeline_part_of_the_page_passes_promtool_on_both_profiles(
    backend_settings: Settings, promtool: str
) -> None:
    """The parts' persisted counters come from SQLite or from Redis hashes: both pages are valid."""
    from prometheus_client import generate_latest

    from rtml.serving.middleware import ServingMetrics
    from rtml.sources.commands import run_ingest

    run_ingest(backend_settings, "synthetic", speed=None, duration_s=120, archive=False)
    metrics = ServingMetrics()
    metrics.registry.register(PipelineCollector(backend_settings, max_age_s=0))
    page = generate_latest(metrics.registry).decode()
    assert "rtml_ingest_received_total" in page and 'rtml_part_up{part="ingest"} 1.0' in page
    out = subprocess.run([promtool, "check", "metrics"], input=page, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


# Feast first, as in a process whose first Feast user is the online store (test_pg_outage.py).
TWO_APPS = """
import os
from rtml.config import get_settings
from rtml.features.online import OnlineMinutes

OnlineMinutes(get_settings()).close()
from prometheus_client import generate_latest
from rtml.serving.middleware import ServingMetrics

first, second = ServingMetrics(), ServingMetrics()
first.forecasts.labels("online").inc(7)
second.forecasts.labels("online").inc()
print(sorted(name for name in os.environ if name.upper().startswith("PROMETHEUS")))
print(generate_latest(second.registry).decode())
"""


def test_two_serving_apps_in_one_process_count_apart(settings: Settings) -> None:
    """Importing Feast must not put prometheus_client into multiprocess mode: there, metric
    values live in files keyed by name and labels, so a second app started with the first's
    counts, and the temp dir Feast names went to every child process."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = subprocess.run([sys.executable, "-c", TWO_APPS], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("[]\n"), out.stdout
    assert 'rtml_serving_forecasts_total{kind="online"} 1.0' in out.stdout


FEAST_WARNINGS = """
import warnings
before = list(warnings.filters)
from rtml.features.feast_repo import import_feast

import_feast()
print(list(warnings.filters) == before)
"""


def test_importing_feast_leaves_the_warning_filters_alone() -> None:
    """Feast's modules call `warnings.simplefilter("once", DeprecationWarning)` for the whole
    process, which put ibis' duckdb deprecations into `rtml train`'s output."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = subprocess.run([sys.executable, "-c", FEAST_WARNINGS], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True", out.stdout
