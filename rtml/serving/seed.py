"""A serving test bed on the real stores: recent synthetic minutes in the feature store, and
small LightGBM forecasters registered in the MLflow registry, the first one champion.

Serving's tests and its latency benchmark start from this, so they exercise the real online
read and the real registry rather than stand-ins. The models are trained with few trees
(the point is serving them, not their accuracy) and differ in their parameters, so their
forecasts differ and a response's numbers tell which version produced it.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime, timedelta

from rtml.config import Settings
from rtml.contracts import MinuteFeatures


def synthetic_minutes(settings: Settings, minutes: int, end: datetime | None = None) -> list[MinuteFeatures]:
    """`minutes` closed minutes of synthetic traffic, the last one ending at `end` (default now)."""
    from rtml.sources.synthetic import SyntheticConfig, SyntheticSource

    end = (end or datetime.now(UTC)).replace(second=0, microsecond=0)
    start = end - timedelta(minutes=minutes)
    sums: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for event in SyntheticSource(SyntheticConfig(seed=settings.seed, start=start, minutes=minutes)).events():
        total = sums[event.event_time // 60_000]
        total[0] += 1
        total[1] += event.fee_sat
    first = int(start.timestamp()) // 60
    return [
        MinuteFeatures.from_window(m * 60_000, sums[m][0], sums[m][1], 1) if m in sums
        else MinuteFeatures.from_window(m * 60_000, 0, 0, 1)
        for m in range(first, first + minutes)
    ]


def write_minutes(settings: Settings, rows: list[MinuteFeatures]) -> None:
    """Through the feature store's own writer (offline + online)."""
    from rtml.features.writer import FeatureStoreSink

    sink = FeatureStoreSink(settings)
    try:
        sink.upsert(rows)
    finally:
        sink.close()


def register_models(settings: Settings, rows: list[MinuteFeatures], count: int) -> list[str]:
    """Train `count` small forecasters on `rows` and register them; the first becomes champion."""
    from rtml.features.dataset import FEATURE_COLUMNS, build_training_frame, minutes_frame
    from rtml.model import registry
    from rtml.model.gbm import GBMParams, QuantileGBM

    frame = build_training_frame(minutes_frame(list(rows)), horizon=settings.model.horizon_min)
    versions = []
    for i in range(count):
        params = GBMParams(n_estimators=20 + 15 * i, num_leaves=7 + 4 * i, seed=settings.seed + i)
        model = QuantileGBM(FEATURE_COLUMNS, params, n_jobs=1).fit(frame)
        run = registry.client(settings).create_run(registry.experiment_id(settings), run_name=f"serving-seed-{i}")
        tags = {"train_start": frame["asof"].min().isoformat(), "train_end": frame["asof"].max().isoformat()}
        versions.append(registry.log_candidate(settings, model, frame.head(50), run.info.run_id, tags))
        registry.client(settings).set_terminated(run.info.run_id)
    registry.promote(settings, versions[0], reason="serving test bed")
    return versions


def seed(settings: Settings, minutes: int = 24 * 60, models: int = 2) -> list[str]:
    """Minutes ending now into the feature store, `models` registered versions; returns them.

    A data directory is seeded once: later calls return the versions of the first (test
    modules share one bed per session this way).
    """
    marker = settings.path("serving-seed.json")
    if marker.exists():
        return list(json.loads(marker.read_text()))
    rows = synthetic_minutes(settings, minutes)
    write_minutes(settings, rows)
    versions = register_models(settings, rows, models)
    marker.write_text(json.dumps(versions))
    return versions


if __name__ == "__main__":
    # `python -m rtml.serving.seed`: seed the configured data directory from a process of its own
    # (as a trainer would), print the versions as JSON.
    from rtml.config import get_settings

    print(json.dumps(seed(get_settings())))
