"""Monitoring cost: one evaluation pass over a week of logged forecasts, a /metrics scrape, and
the dashboard's JSON endpoints, on the real stores of a fresh data directory.

A week of synthetic minutes (calm, then a swinging fee level: rtml.monitoring.scenario) goes
into the real feature store, and one logged pipeline forecast per minute into the real prediction log
(P10/P50/P90 around the level 5 minutes earlier, as a naive model would give). Then it times
the first pass (judging every hour of the week; retraining is not triggered: no champion, no
drift event), a second pass (nothing new: the steady-state cost of the scheduler's minute
job), the pipeline collector behind /metrics, and each dashboard payload.

    .venv/bin/python bench/monitoring_pass.py [--days 7] [--profile embedded|services]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=float, default=7)
    parser.add_argument("--profile", choices=("embedded", "services"), default="embedded")
    args = parser.parse_args()
    os.environ["RTML_DATA_DIR"] = tempfile.mkdtemp(prefix="rtml-bench-monitoring-")
    os.environ["RTML_PROFILE"] = args.profile
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    os.environ["DO_NOT_TRACK"] = "1"

    import pandas as pd

    from rtml.config import get_settings
    from rtml.contracts import datetime_to_ms
    from rtml.features.writer import FeatureStoreSink
    from rtml.monitoring import dashboard_api
    from rtml.monitoring.evaluate import QualityStore
    from rtml.monitoring.events import EventLog
    from rtml.monitoring.loop import judge_new_hours
    from rtml.monitoring.metrics import PipelineCollector
    from rtml.monitoring.scenario import swinging_fee_minutes
    from rtml.serving.prediction_log import PredictionLog, PredictionRecord

    settings = get_settings()
    hours = int(args.days * 24)
    start = pd.Timestamp.now(tz="UTC").floor("h") - pd.Timedelta(hours=hours)
    minutes = swinging_fee_minutes(start, hours - 12, 12)
    sink = FeatureStoreSink(settings)
    sink.write_frame(minutes)
    sink.close()
    log = PredictionLog(settings)
    now_ms = int(time.time() * 1000)
    avg = minutes["fee_avg_sat"].to_numpy()
    for i in range(5, len(minutes)):
        level = float(avg[i - 5])
        target = minutes["minute"].iloc[i]
        log.record(
            PredictionRecord(now_ms, "1", datetime_to_ms(target) - 4 * 60_000, datetime_to_ms(target),
                             level * 0.7, level, level * 1.4, 1.0, "pipeline")
        )  # fmt: skip
    log.flush(timeout_s=120)
    log.close()
    print(f"{len(minutes):,} minutes and {len(minutes) - 5:,} forecasts over {hours} h ({args.profile})")

    def timed(what: str, func: object, repeat: int = 1) -> object:
        result = None
        started = time.perf_counter()
        for _ in range(repeat):
            result = func()  # type: ignore[operator]
        print(f"  {what:<44} {(time.perf_counter() - started) / repeat * 1000:9.1f} ms")
        return result

    store, events = QualityStore(settings), EventLog(settings)
    clock = (minutes["minute"].max() + pd.Timedelta(minutes=1)).to_pydatetime()
    judged = timed("first pass: judge every hour", lambda: judge_new_hours(settings, store, events, clock))
    print(f"    {len(judged.verdicts)} hours judged, {sum(v.breach for v in judged.verdicts)} breaches, alarm={judged.alarm}")  # type: ignore[attr-defined]
    timed("steady pass: nothing new to judge", lambda: judge_new_hours(settings, store, events, clock), repeat=5)
    store.close()
    events.close()
    collector = PipelineCollector(settings)
    list(collector.collect())  # first scrape: MLflow creates its tables, imports warm up
    for produce in (collector._freshness, collector._latency, collector._quality, collector._drift, collector._model):
        timed(f"  /metrics part {produce.__name__}", lambda produce=produce: list(produce()), repeat=3)
    families = timed("/metrics: pipeline collector", lambda: list(collector.collect()), repeat=5)
    print(f"    {len(families)} metric families")  # type: ignore[arg-type]
    timed("dashboard /api/minutes (6 h)", lambda: dashboard_api.minutes_payload(settings, 6), repeat=3)
    timed("dashboard /api/forecasts (6 h)", lambda: dashboard_api.forecasts_payload(settings, 6), repeat=3)
    timed("dashboard /api/quality (48 h)", lambda: dashboard_api.quality_payload(settings, 48), repeat=3)
    timed("dashboard /api/drift", lambda: dashboard_api.drift_payload(settings), repeat=3)


if __name__ == "__main__":
    main()
