"""Prometheus metrics of the whole pipeline, read from each part's own store at scrape time.

The pipeline runs as several processes (ingestion, aggregation, serving, scheduler), so no
process holds every number in memory. Each part persists its counters and exposes a plain
function returning `dict[str, float]`; `PipelineCollector` calls them when Prometheus scrapes
`/metrics` and turns them into metric families, next to figures derived from the data itself
(freshness, forecast latency, wQL, drift share, champion version). A part whose counters cannot
be read is reported by `rtml_part_up{part=...} 0` instead of failing the whole scrape.

Every name appears once on a page (Prometheus refuses a page with two HELP lines for one
name): serving's persisted counters, which count every replica since the data directory was
created, are `rtml_serving_recorded_*`, beside the replica's own in-process `rtml_serving_*`.
Reading the stores costs milliseconds to seconds, so a scrape runs off the event loop (see
rtml.serving.app) and the families are cached for `monitoring.metrics_cache_s`: scrapes more
frequent than that, from several Prometheus servers say, cost nothing more.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from rtml.aggregate.embedded import aggregate_counters
from rtml.config import Settings
from rtml.quality.reports import quality_counters
from rtml.serving.prediction_log import serving_counters
from rtml.sources.ingest import ingest_counters

log = logging.getLogger(__name__)

Counters = Callable[[Settings], Mapping[str, float]]
# part -> the function returning that part's persisted counters.
COUNTER_SOURCES: dict[str, Counters] = {
    "ingest": ingest_counters,
    "aggregate": aggregate_counters,
    "quality": quality_counters,
    "serving": serving_counters,
}
# Counter keys that are levels, not running totals (everything else is exposed as a counter).
GAUGE_KEYS = frozenset(
    {"open_windows", "watermark", "watermark_lag_s", "lag_events", "last_drift_share", "last_run_time_s"}
)
# Metric-name prefix of a part's persisted counters, where it is not the part's name.
PREFIXES: dict[str, str] = {"serving": "serving_recorded"}
# How far back forecast latency quantiles look.
LATENCY_WINDOW = timedelta(minutes=15)
_NAME = re.compile(r"[^a-zA-Z0-9_]")


def _metric_name(part: str, key: str) -> str:
    """`rtml_<part>_<key>`, with a key's `_s` spelled out as Prometheus' base unit `_seconds`."""
    key = key[: -len("_s")] + "_seconds" if key.endswith("_s") else key
    return "rtml_" + _NAME.sub("_", f"{part}_{key}").lower()


class PipelineCollector(Collector):
    """A custom collector: every scrape reads the parts' counters and the monitoring stores afresh."""

    def __init__(
        self, settings: Settings, sources: Mapping[str, Counters] | None = None, max_age_s: float | None = None
    ) -> None:
        self.settings = settings
        self.sources = COUNTER_SOURCES if sources is None else sources
        self.max_age_s = settings.monitoring.metrics_cache_s if max_age_s is None else max_age_s
        self._lock = threading.Lock()
        self._cached: tuple[float, list[Metric]] | None = None

    def collect(self) -> Iterator[Metric]:
        """The families of the last read, when younger than max_age_s; else read afresh (one
        reader at a time: concurrent scrapes wait for it and share its result)."""
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] >= self.max_age_s:
                seen: set[str] = set()
                families = []
                for family in self._read():
                    if family.name in seen:  # never two HELP lines for one name
                        log.warning("metric %s produced twice; the second is dropped", family.name)
                        continue
                    seen.add(family.name)
                    families.append(family)
                self._cached = (now, families)
            return iter(self._cached[1])

    def _read(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("rtml_part_up", "1 when the part's counters could be read", labels=["part"])
        for part, read in self.sources.items():
            try:
                counters = read(self.settings)
            except Exception as exc:  # one unreadable part must not hide the others
                log.debug("counters of %s unreadable: %s", part, exc)
                up.add_metric([part], 0)
                continue
            up.add_metric([part], 1)
            for key, value in sorted(counters.items()):
                name = _metric_name(PREFIXES.get(part, part), key.removesuffix("_total"))
                if key in GAUGE_KEYS:
                    yield GaugeMetricFamily(name, f"{part}: {key}", value=value)
                else:
                    yield CounterMetricFamily(name, f"{part}: {key} since the data directory was created", value=value)
        yield up
        yield from self._derived()

    def _derived(self) -> Iterator[Metric]:
        """Figures computed from the data: each is skipped while its source holds nothing."""
        for produce in (self._freshness, self._latency, self._quality, self._drift, self._model, self._components):
            try:
                yield from produce()
            except Exception as exc:
                log.debug("%s unavailable: %s", produce.__name__, exc)

    def _freshness(self) -> Iterator[Metric]:
        from rtml.monitoring.loop import read_minutes

        now = datetime.now(UTC)
        minutes = read_minutes(self.settings, now - timedelta(hours=2), now)
        if minutes.empty:
            return
        newest = minutes.sort_values("minute").iloc[-1]
        end = newest["minute"] + timedelta(minutes=1)
        yield GaugeMetricFamily(
            "rtml_feature_freshness_seconds", "Age of the newest closed minute in the feature store",
            value=(now - end).total_seconds(),
        )  # fmt: skip
        yield GaugeMetricFamily(
            "rtml_ingest_rate_per_second", "Transactions per second in the newest closed minute",
            value=float(newest["tx_count"]) / 60.0,
        )  # fmt: skip

    def _latency(self) -> Iterator[Metric]:
        import numpy as np

        from rtml.serving.prediction_log import read_predictions

        since = int((time.time() - LATENCY_WINDOW.total_seconds()) * 1000)
        latencies = np.array([r.latency_ms for r in read_predictions(self.settings, since_ms=since)]) / 1000
        if not len(latencies):
            return
        # A summary (quantiles, count, sum) over the forecasts of the last 15 minutes, in seconds.
        name = "rtml_forecast_latency_seconds"
        family = Metric(name, "Forecast latency over the last 15 minutes", "summary")
        for q in (0.5, 0.9, 0.99):
            family.add_sample(name, {"quantile": str(q)}, float(np.quantile(latencies, q)))
        family.add_sample(f"{name}_count", {}, float(len(latencies)))
        family.add_sample(f"{name}_sum", {}, float(latencies.sum()))
        yield family

    def _quality(self) -> Iterator[Metric]:
        from rtml.monitoring.evaluate import open_quality_store

        store = open_quality_store(self.settings)
        try:
            hours = store.hours(limit=1)
        finally:
            store.close()
        if not hours:
            return
        last = hours[-1]
        labels = ["model_version"]
        for name, doc, value in (
            ("rtml_forecast_wql", "wQL of the last judged hour", last.wql),
            ("rtml_forecast_mae", "MAE of P50 in the last judged hour", last.mae),
            ("rtml_forecast_coverage", "Share of actuals inside P10-P90 in the last judged hour", last.coverage),
        ):
            family = GaugeMetricFamily(name, doc, labels=labels)
            family.add_metric([last.model_version], value)
            yield family
        yield GaugeMetricFamily(
            "rtml_forecast_wql_threshold", "Breach threshold of the hourly wQL", value=self.settings.monitoring.wql_threshold
        )

    def _drift(self) -> Iterator[Metric]:
        from rtml.monitoring.events import open_event_log

        events = open_event_log(self.settings)
        try:
            checks = [e for e in events.recent(limit=50, prefix="drift.") if "share" in e.details]
        finally:
            events.close()
        if not checks:
            return
        last = checks[-1]
        yield GaugeMetricFamily("rtml_drift_share", "Share of drifted columns at the last check", value=float(last.details["share"]))
        yield GaugeMetricFamily("rtml_drift_alert", "1 when the last drift check raised an alert", value=float(last.kind == "drift.alert"))

    def _components(self) -> Iterator[Metric]:
        """Restarts and state of the components `rtml up` supervises (from its state file)."""
        from rtml.ops.supervisor import read_state

        state: Any = read_state(self.settings)
        if not state:
            return
        restarts = CounterMetricFamily(
            "rtml_component_restarts", "Restarts of a supervised component since `rtml up`", labels=["component"]
        )
        running = GaugeMetricFamily("rtml_component_running", "1 while the component runs", labels=["component"])
        for comp in state["components"].values():
            restarts.add_metric([comp["name"]], float(comp["restarts"]))
            running.add_metric([comp["name"]], float(comp["state"] == "running"))
        yield restarts
        yield running

    def _model(self) -> Iterator[Metric]:
        from rtml.monitoring.loop import champion_version

        version = champion_version(self.settings)
        if version is None:
            return
        info = GaugeMetricFamily("rtml_model_version", "Registry version of the champion model", labels=["version"])
        info.add_metric([version], float(version) if version.isdigit() else 1.0)
        yield info

