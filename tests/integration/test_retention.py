"""Retention on every store, on both profiles against the real Redis and PostgreSQL: each store
trims to its window on the pipeline clock, the stream never past what a consumer committed, the
dashboard's reports stay; then a 3-day soak through `rtml up` (bench/soak.py with small windows)
checks the bounds, the champion and its rollback history with their artifacts, and a kill -9 in
the middle of retention."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rtml.config import Settings, get_settings
from rtml.contracts import MINUTE_MS, DeadLetter, TxEvent

HOUR_MS = 3_600_000
T0 = int(datetime(2024, 10, 1, tzinfo=UTC).timestamp() * 1000)


def _events(n: int, step_ms: int) -> list[TxEvent]:
    return [TxEvent(f"{i:064x}", T0 + i * step_ms, 1000 + i, 250, "test", 1_700_000_000_000 + i) for i in range(n)]


def test_stream_trims_only_what_every_consumer_committed(backend_settings: Settings) -> None:
    from rtml.stream import open_stream

    with open_stream(backend_settings) as stream:
        stream.append(_events(600, MINUTE_MS))  # ten hours, one event a minute
        offsets = [o for o, _ in stream.read(None, 1000)]
        cutoff = T0 + 400 * MINUTE_MS
        assert stream.trim_consumed(cutoff, ("aggregator", "archiver")) == 0  # nobody committed
        stream.commit("aggregator", offsets[100])
        assert stream.trim_consumed(cutoff, ("aggregator", "archiver")) == 0  # the archiver never did
        stream.commit("archiver", offsets[300])
        assert stream.trim_consumed(cutoff, ("aggregator", "archiver")) == 101  # up to the slower one
        assert [e.event_time for _, e in stream.read(None, 1)] == [T0 + 101 * MINUTE_MS]
        assert [e.event_time for _, e in stream.read(stream.committed("aggregator"), 1)] == [T0 + 101 * MINUTE_MS]
        stream.commit("aggregator", offsets[599])
        assert stream.trim_consumed(cutoff, ("aggregator", "archiver")) == 200  # now the archiver holds it
        stream.commit("archiver", offsets[599])
        assert stream.trim_consumed(cutoff, ("aggregator", "archiver")) == 99  # now the window does
        size, rows, oldest = stream.stats()
        assert (rows, oldest) == (200, cutoff) and size > 0
        assert stream.trim_consumed(cutoff, ("aggregator", "archiver")) == 0  # a re-run boundary
        assert len(stream.read(None, 1000)) == 200


def test_dead_letters_predictions_and_events_trim_to_their_windows(backend_settings: Settings) -> None:
    from rtml.monitoring.events import EventLog
    from rtml.serving.prediction_log import JUDGED_KINDS, PredictionRecord, PredictionStore
    from rtml.sources.deadletters import open_ingest_store

    cutoff = T0 + 5 * HOUR_MS
    with open_ingest_store(backend_settings) as ingest:
        # Aged by the ingest clock they were stamped with, not by when they arrived (now).
        now = int(time.time() * 1000)
        ingest.record([DeadLetter("x" * 10, "bad", "test", now)], {"dead_letters": 1}, cutoff - 1)
        ingest.record([DeadLetter("y" * 10, "bad", "test", now)], {"dead_letters": 1}, cutoff)
        assert ingest.trim_dead_letters(cutoff) == 1
        assert ingest.trim_dead_letters(cutoff) == 0
        assert ingest.dead_letter_stats()[1:] == (1, cutoff)
        assert ingest.dead_letters()[0].raw == "y" * 10

    store = PredictionStore(backend_settings)
    try:
        records = [
            PredictionRecord(0, "1", T0 + h * HOUR_MS, T0 + h * HOUR_MS + m * MINUTE_MS, 1.0, 2.0, 3.0, 0.1, kind)
            for h in range(10)
            for m in range(0, 60, 15)
            for kind in ("pipeline", "online", "what-if")
        ]
        store.write(records, {})
        assert store.trim(JUDGED_KINDS, cutoff) == 20
        assert store.stats(JUDGED_KINDS)[1:] == (20, cutoff)
        assert store.stats(JUDGED_KINDS, exclude=True)[1:] == (80, T0)  # callers have their own window
        assert store.trim(JUDGED_KINDS, cutoff + HOUR_MS, exclude=True) == 48
        assert store.stats(JUDGED_KINDS, exclude=True)[1:] == (32, cutoff + HOUR_MS)
        assert store.stats(JUDGED_KINDS)[1] == 20
    finally:
        store.close()

    log = EventLog(backend_settings)
    try:
        for h in range(10):
            log.record("drift.ok", time_ms=T0 + h * HOUR_MS, key=f"drift@{h}")
        assert log.trim(cutoff) == 5
        assert log.trim(cutoff) == 0
        assert log.stats()[1:] == (5, cutoff)
        assert [e.time_ms for e in log.recent()] == [T0 + h * HOUR_MS for h in range(5, 10)]
    finally:
        log.close()


def test_caller_forecasts_age_by_their_minute_on_the_pipeline_clock(backend_settings: Settings) -> None:
    """The retention job at boundary t drops callers' forecasts (all three kinds) whose target
    minute is older than t - caller_predictions_days, whatever the wall clock said when they were
    asked (now, here: a wall-time trim would keep them all); the pipeline's own keep theirs."""
    from rtml.ops.retention import run_retention
    from rtml.serving.prediction_log import JUDGED_KINDS, PredictionRecord, PredictionStore

    settings = backend_settings.model_copy(
        update={"retention": backend_settings.retention.model_copy(update={"caller_predictions_days": 0.25})}
    )
    now = int(time.time() * 1000)
    store = PredictionStore(settings)
    try:
        store.write(
            [
                PredictionRecord(now, "1", T0 + h * HOUR_MS, T0 + h * HOUR_MS + 5 * MINUTE_MS, 1.0, 2.0, 3.0, 0.1, kind)
                for h in range(12)
                for kind in ("online", "batch", "what-if", "pipeline")
            ],
            {},
        )
        t = T0 + 12 * HOUR_MS  # the boundary after the last hour: 6 h window, so hours 6-11 stay
        assert run_retention(settings, t)["caller_predictions"] == 3 * 6
        assert store.stats(JUDGED_KINDS, exclude=True)[1:] == (3 * 6, T0 + 6 * HOUR_MS + 5 * MINUTE_MS)
        assert store.stats(JUDGED_KINDS)[1] == 12  # the pipeline's own have their 90 days
        assert run_retention(settings, t)["caller_predictions"] == 0  # a re-run boundary
    finally:
        store.close()


def _replay(ingestor: Any, events: list[TxEvent], extra: list[Any] | None = None) -> Any:
    from rtml.sources.synthetic import to_utx_message

    return ingestor.ingest([json.dumps(to_utx_message(e)) for e in events] + (extra or []), "replay")


def test_a_long_replay_holds_one_ttl_of_dedup_and_ages_dead_letters_on_its_clock(backend_settings: Settings) -> None:
    """30 h of event time replayed at max speed (a few wall seconds), one bad frame a batch and
    one valid-looking line dated 2099: dedup holds about one TTL (1 h) of hashes throughout and
    still removes duplicates within it; retention at the replay's clock keeps 6 h of dead letters."""
    from rtml.ops.retention import run_retention
    from rtml.sources.deadletters import open_ingest_store
    from rtml.sources.ingest import Ingestor

    s = backend_settings
    s.ingest = s.ingest.model_copy(update={"dedup_ttl_s": 3600})
    keep_only = {k: 0.0 for k in ("stream_hours", "predictions_days", "caller_predictions_days", "events_days",
                                  "reports_days", "online_days", "candidates_days")}  # fmt: skip
    s.retention = s.retention.model_copy(update={**keep_only, "dead_letters_days": 0.25})
    step, per_batch = 20_000, 30  # an event every 20 s, ten minutes a batch
    events = _events(30 * 180, step)
    liar = TxEvent("f" * 64, int(datetime(2099, 1, 1, tzinfo=UTC).timestamp() * 1000), 1, 250, "test", 0)
    sizes = []
    with Ingestor(s) as ingestor:
        for i in range(0, len(events), per_batch):
            batch = events[i : i + per_batch]
            _replay(ingestor, batch[:15] + ([liar] if i == 90 * per_batch else []) + batch[15:], ["{broken"])
            sizes.append(ingestor.dedup.size())
        assert ingestor.clock.high == events[-1].event_time  # the 2099 line did not move it
        assert 150 <= sizes[-1] and max(sizes[12:]) <= 180 * 13 // 12 + per_batch + 1  # one TTL (+ a purge step)
        assert _replay(ingestor, events[-150:]).duplicates == 150  # the last 50 min: within the TTL
        assert _replay(ingestor, events[-300:-270]).appended == 30  # 100 min back: past it
        assert _replay(ingestor, events[-300:-270]).duplicates == 30  # seen again just now
    t = events[-1].event_time // MINUTE_MS * MINUTE_MS  # the pipeline clock: the newest closed minute
    run_retention(s, t)
    with open_ingest_store(s) as store:
        size, rows, oldest = store.dead_letter_stats()
        assert oldest is not None and t - 6 * HOUR_MS <= oldest <= t
        assert 6 * 6 <= rows <= 6 * 6 + 1  # one a batch of ten minutes
        assert max(d.clock for d in store.dead_letters(1000)) <= events[-1].event_time


def test_a_flood_of_bad_frames_keeps_the_newest_dead_letters_up_to_the_cap(backend_settings: Settings) -> None:
    from rtml.sources.deadletters import open_ingest_store
    from rtml.sources.ingest import Ingestor, ingest_counters

    backend_settings.retention = backend_settings.retention.model_copy(update={"dead_letters_max_rows": 100})
    with Ingestor(backend_settings) as ingestor:
        for b in range(10):
            _replay(ingestor, _events(1, MINUTE_MS), [f"{{bad {b} {i}" for i in range(50)])
    with open_ingest_store(backend_settings) as store:
        assert store.dead_letter_count() == 100
        assert [d.raw for d in store.dead_letters(100)] == [f"{{bad {b} {i}" for b in (8, 9) for i in range(50)]
    counters = ingest_counters(backend_settings)
    assert (counters["dead_letters"], counters["dead_letters_dropped"]) == (500, 400)


def test_events_are_stamped_with_the_boundary_of_the_job_recording_them(settings: Settings) -> None:
    from rtml.aggregate.clock import current_boundary
    from rtml.monitoring.events import EventLog

    log = EventLog(settings)
    try:
        token = current_boundary.set(T0)
        try:
            log.record("drift.ok")
        finally:
            current_boundary.reset(token)
        before = int(time.time() * 1000)
        log.record("model.promoted")  # no job, no minute yet: wall time
        assert log.recent()[0].time_ms == T0 and log.recent()[1].time_ms >= before
    finally:
        log.close()


def test_reports_keep_what_the_dashboard_links_to(settings: Settings) -> None:
    from rtml.monitoring.dashboard_api import drift_payload
    from rtml.quality.reports import DASHBOARD_REPORTS, load_index, report_stats, reports_dir, trim_reports

    folder = reports_dir(settings)
    runs = []
    for h in range(30):
        moment = datetime.fromtimestamp((T0 + h * HOUR_MS) / 1000, UTC)
        stem = f"{moment:%Y%m%dT%H%M%S}000Z-drift"
        (folder / f"{stem}.html").write_text("<html></html>")
        (folder / f"{stem}.json").write_text("{}")
        os.utime(folder / f"{stem}.html", (T0 / 1000 + h * 3600, T0 / 1000 + h * 3600))
        runs.append({"time": moment.isoformat(), "kind": "drift", "html": f"{stem}.html", "json": f"{stem}.json"})
    (folder / "index.json").write_text(json.dumps({"runs": runs}))
    shown = {r["name"] for r in drift_payload(settings)["reports"]}
    assert len(shown) == DASHBOARD_REPORTS
    # An orphan from a crash between the index and the sweep, and a page not indexed yet.
    (folder / "20241001T000500000Z-drift.html").write_text("orphan")
    (folder / "20241002T120000000Z-drift.html").write_text("being written")

    cutoff = datetime.fromtimestamp((T0 + 25 * HOUR_MS) / 1000, UTC)
    assert trim_reports(settings, cutoff) == 2 * (30 - DASHBOARD_REPORTS) + 1
    assert all((folder / name).exists() for name in shown)  # every link the dashboard showed opens
    assert len(load_index(settings)) == DASHBOARD_REPORTS
    assert (folder / "20241002T120000000Z-drift.html").exists()
    # Past every run, the dashboard's reports stay; the unindexed page is old now, and swept.
    assert trim_reports(settings, cutoff + timedelta(hours=100)) == 1
    assert report_stats(settings)[1] == DASHBOARD_REPORTS
    assert all((folder / name).exists() for name in shown)


def test_online_offline_and_archive_trim_and_keep_training_windows(backend_settings: Settings) -> None:
    import pandas as pd

    from rtml.archive.parquet_lake import archive_pending, archive_stats, read_events, trim_archive
    from rtml.features.dataset import minutes_from_totals
    from rtml.features.offline import open_offline
    from rtml.features.online import last_minutes
    from rtml.features.online_keys import online_stats, trim_online
    from rtml.features.writer import FeatureStoreSink
    from rtml.stream import open_stream

    n = 3 * 1440  # three days of minutes
    start = pd.Timestamp(T0, unit="ms", tz="UTC")
    minutes = minutes_from_totals(
        pd.date_range(start, periods=n, freq="min"), np.full(n, 3), np.arange(n) * 10 + 30
    )
    sink = FeatureStoreSink(backend_settings)
    sink.write_frame(minutes)
    cutoff_ms = T0 + 2 * 1440 * MINUTE_MS + 30 * MINUTE_MS  # half an hour into the third day
    assert trim_online(backend_settings, cutoff_ms) == 2 * 1440 + 30
    assert online_stats(backend_settings)[1:] == (1440 - 30, cutoff_ms)
    assert len(last_minutes(backend_settings)) == backend_settings.features.online_minutes  # serving still reads

    # The offline store keeps a protected training window (day one, 06:00-12:00) whole.
    kept = (start + pd.Timedelta(hours=6), start + pd.Timedelta(hours=12))
    offline = open_offline(backend_settings)
    try:
        cutoff = pd.Timestamp(cutoff_ms, unit="ms", tz="UTC")
        assert offline.trim(cutoff.to_pydatetime(), [kept]) == 2 * 1440 + 30 - 360
        assert offline.trim(cutoff.to_pydatetime(), [kept]) == 0
        left = offline.read()
        assert left["minute"].min() == kept[0] and len(left) == 360 + 1440 - 30
        assert left[left["minute"] < kept[1]]["minute"].max() == kept[1] - pd.Timedelta(minutes=1)
        assert offline.stats()[1:] == (360 + 1440 - 30, int(kept[0].timestamp()) * 1000)
    finally:
        getattr(offline, "close", lambda: None)()

    with open_stream(backend_settings) as stream:
        stream.append(_events(48, HOUR_MS // 2))  # a day, two events an hour
    archive_pending(backend_settings)
    assert trim_archive(backend_settings, T0 + 10 * HOUR_MS + 1) == 10  # whole hours only
    assert archive_stats(backend_settings)[1:] == (28, T0 + 10 * HOUR_MS)
    assert read_events(backend_settings)["event_time"].min() == T0 + 10 * HOUR_MS


def test_registry_stays_bounded_across_many_trims(backend_settings: Settings) -> None:
    """Eight trainings, eight hours of event time apart, a promotion every third, retention after
    each: the registry's rows (MLflow keeps deleted versions, their tags and their runs' output
    links) and files stop growing once the candidates' window and the history are full; version
    numbers are never given twice; the champion and its history still load."""
    import mlflow

    from rtml.features.dataset import FEATURE_COLUMNS, build_training_frame, minutes_frame
    from rtml.model import registry
    from rtml.model.gbm import GBMParams, QuantileGBM
    from rtml.model.registry_retention import trim_candidates
    from rtml.serving.seed import synthetic_minutes

    settings = backend_settings.model_copy(
        update={"retention": backend_settings.retention.model_copy(update={"champion_history": 2})}
    )
    start = datetime.fromtimestamp(T0 / 1000, UTC)
    frame = build_training_frame(minutes_frame(synthetic_minutes(settings, 300, start)), horizon=5)
    model = QuantileGBM(FEATURE_COLUMNS, GBMParams(n_estimators=5, num_leaves=4), n_jobs=1).fit(frame)
    tables = ("model_versions", "model_version_tags", "inputs", "runs", "logged_models", "metrics", "params", "tags")
    sizes, numbers, written = [], [], []
    for k in range(8):
        end = start + timedelta(hours=8 * k)
        mlflow.set_tracking_uri(registry.tracking_uri(settings))
        with mlflow.start_run(experiment_id=registry.experiment_id(settings)) as run:
            mlflow.log_params({"rows": len(frame), "train_end": end.isoformat()})
            mlflow.log_metrics({"wql": 0.2, "coverage": 0.8})
        window = {"train_start": (end - timedelta(days=7)).isoformat(), "train_end": end.isoformat()}
        numbers.append(registry.log_candidate(settings, model, frame.tail(20), run.info.run_id, window))
        mv = registry.client(settings).get_model_version(registry.MODEL_NAME, numbers[-1])
        written.append({mv.run_id, mv.model_id or mv.source.removeprefix("models:/")})  # the logged model
        if k % 3 == 0:
            registry.promote(settings, numbers[-1])
        trim_candidates(settings, end - timedelta(hours=20))  # two earlier candidates stay
        store = registry.client(settings)._tracking_client.store
        with store.engine.connect() as conn:
            from sqlalchemy import text

            rows = {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar() for t in tables}
        files = [p for p in (settings.root / "mlflow").rglob("*") if p.is_file() and p.name != "mlflow.db"]
        sizes.append((rows, len(files)))
    assert len(set(numbers)) == len(numbers)  # every training got a version number of its own
    history = registry.champion_history(settings)
    assert history == [numbers[3], numbers[6]] and registry.champion_version(settings) == numbers[6]
    for version in history:
        assert registry.load_version(settings, version).version == version
    # From the fourth round on, the window holds the same count: the rows and files do not grow.
    assert sizes[3:] == [sizes[3]] * 5, sizes
    kept_numbers = {v["version"] for v in registry.list_versions(settings)}
    kept = len(kept_numbers)
    assert sizes[-1][0]["model_versions"] <= kept + 1  # + the highest number, which is never reused
    assert sizes[-1][0]["runs"] == sizes[-1][0]["logged_models"] == kept
    # MLflow's process-wide cache of artifact repositories (one per run and logged model written
    # to) forgets what retention deleted, and only that.
    from mlflow.tracking._tracking_service.utils import _artifact_repos_cache

    cached = set(_artifact_repos_cache)
    live = set().union(*(keys for number, keys in zip(numbers, written, strict=True) if number in kept_numbers))
    deleted = set().union(*written) - live
    assert deleted and live & cached, (deleted, live, cached)
    assert not deleted & cached


# ---- the soak through `rtml up`: every store, the registry, a kill -9 -----------------------

SOAK_DAYS = 3
# Windows small enough to fill twice over in three days (hours of event time).
WINDOWS = {
    "STREAM_HOURS": "6", "DEAD_LETTERS_DAYS": "0.5", "PREDICTIONS_DAYS": "0.5", "CALLER_PREDICTIONS_DAYS": "0.5",
    "EVENTS_DAYS": "0.5", "REPORTS_DAYS": "0.25", "ONLINE_DAYS": "0.25", "CANDIDATES_DAYS": "0.5",
    "ARCHIVE_DAYS": "0.5", "CHAMPION_HISTORY": "2",
}  # fmt: skip


def _bench_soak() -> Any:
    path = Path(__file__).resolve().parents[2] / "bench" / "soak.py"
    spec = importlib.util.spec_from_file_location("bench_soak", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def soak(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[dict[str, Any]], Settings, Any]]:
    """Three simulated days through `rtml up` (drift every 2 h, retraining every 12 h, judged hourly)."""
    bench = _bench_soak()
    saved = dict(os.environ)
    # Retention's own hourly job must not depend on the wall clock; serving answers on old minutes.
    cadences = {**bench.CADENCES, "RTML_DRIFT__INTERVAL_S": "7200", "RTML_SCHEDULER__RETRAIN_INTERVAL_S": "43200"}
    try:
        rows, settings = bench.run_soak(
            SOAK_DAYS, "embedded", WINDOWS, cadences, rate_per_min=20, requests=20, timeout_s=600
        )
        yield rows, settings, bench
    finally:
        from rtml.ops.deploy import bring_down

        bring_down(purge=True, yes=True)
        Path(os.environ["RTML_DATA_DIR"]).parent.rmdir()  # the soak's own temporary folder, empty now
        os.environ.clear()
        os.environ.update(saved)


@pytest.mark.slow
def test_soak_three_days_within_windows_and_bounds(soak: tuple[list[dict[str, Any]], Settings, Any]) -> None:
    from rtml.ops.retention import store_stats, windows_ms
    from rtml.ops.scheduler import scheduler_state
    from rtml.quality.reports import DASHBOARD_REPORTS, load_index

    rows, settings, bench = soak
    assert [r["day"] for r in rows] == list(range(1, SOAK_DAYS + 1))
    last_retention = scheduler_state(settings)[0]["retention"][0]
    windows = windows_ms(settings)
    stores = {s["name"]: s for s in store_stats(settings)}
    assert set(stores) == {
        "stream", "dead_letters", "predictions", "caller_predictions", "events", "reports", "online",
        "offline", "archive", "registry",
    }  # fmt: skip
    for name in ("stream", "predictions", "caller_predictions", "events", "online", "archive"):
        oldest = datetime.fromisoformat(stores[name]["oldest"]).timestamp() * 1000
        assert last_retention - windows[name] <= oldest, f"{name} holds {stores[name]['oldest']}"
        assert stores[name]["rows"] > 0
    # Reports: within the window, or among the ones the dashboard shows.
    runs = load_index(settings)
    old = [r for r in runs if datetime.fromisoformat(r["time"]).timestamp() * 1000 < last_retention - windows["reports"]]
    assert len(runs) >= DASHBOARD_REPORTS and len(old) <= DASHBOARD_REPORTS
    # Memory against day 1, disk past each window over the last two days. The registry's bytes
    # follow how many trainings the last half day held (alarms retrain): its bound is on content,
    # checked in the next test. Latencies are the benchmark's figures (bench/soak.py): timed on a
    # shared machine in a test, they would measure the machine, not the pipeline.
    assert bench.bounds(rows, settings, last=2, reference_day=1, exclude=("registry",), latencies=False) == []


@pytest.mark.slow
def test_soak_keeps_the_champion_and_its_history_with_artifacts(
    soak: tuple[list[dict[str, Any]], Settings, Any],
) -> None:
    from rtml.model.registry import champion_history, champion_version, list_versions, load_version
    from rtml.ops.retention import windows_ms
    from rtml.ops.scheduler import scheduler_state

    _, settings, _ = soak
    champion, history = champion_version(settings), champion_history(settings)
    assert champion is not None and champion in history and len(history) <= 2
    versions = {v["version"]: v for v in list_versions(settings)}
    assert set(history) <= set(versions)
    shutil.rmtree(settings.root / "mlflow" / "cache", ignore_errors=True)
    for version in history:
        model = load_version(settings, version)  # from the registry's artifacts, not a cache
        assert model.version == version
    cutoff = scheduler_state(settings)[0]["retention"][0] - windows_ms(settings)["registry"]
    for v in versions.values():
        if v["version"] not in history:
            assert datetime.fromisoformat(v["train_end"]).timestamp() * 1000 >= cutoff


@pytest.mark.slow
def test_kill_9_in_the_middle_of_retention_loses_nothing_kept(
    soak: tuple[list[dict[str, Any]], Settings, Any], tmp_path: Path
) -> None:
    """Retention run on the soak's stores with windows halved: once whole on a copy, once killed
    at a random moment and run again; both end in the same stores, and nothing kept is gone."""
    from rtml.model.registry import champion_history, load_version
    from rtml.ops.scheduler import scheduler_state

    _, settings, _ = soak
    t_ms = scheduler_state(settings)[0]["retention"][0]
    halved = {f"RTML_RETENTION__{k}": str(float(v) / 2) for k, v in WINDOWS.items() if "DAYS" in k or "HOURS" in k}
    # The copy keeps the original's namespace: Feast's online tables are named after it.
    env = {**os.environ, **halved, "RTML_NAMESPACE": settings.namespace}
    copy = tmp_path / "reference"
    shutil.copytree(settings.root, copy, symlinks=True)
    code = f"from rtml.config import get_settings; from rtml.ops.retention import run_retention; run_retention(get_settings(), {t_ms})"
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", code], env={**env, "RTML_DATA_DIR": str(copy)}, check=True, timeout=300)
    whole_s = time.monotonic() - started

    killed = subprocess.Popen([sys.executable, "-c", code], env={**env, "RTML_DATA_DIR": str(settings.root)})
    time.sleep(random.uniform(0.3, 1.0) * whole_s)  # a random moment inside the run, not a wait for it
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    for version in champion_history(settings):  # the history survives mid-run too
        load_version(settings, version)
    subprocess.run([sys.executable, "-c", code], env={**env, "RTML_DATA_DIR": str(settings.root)}, check=True, timeout=300)

    def stores(root: Path) -> dict[str, tuple[int, str | None]]:
        out = subprocess.run(
            [sys.executable, "-c", "import json; from rtml.config import get_settings; from rtml.ops.retention "
             "import store_stats; print(json.dumps(store_stats(get_settings())))"],
            env={**env, "RTML_DATA_DIR": str(root)}, capture_output=True, text=True, check=True, timeout=120,
        )  # fmt: skip
        return {s["name"]: (s["rows"], s["oldest"]) for s in json.loads(out.stdout)}

    assert stores(settings.root) == stores(copy)
    assert champion_history(settings) == champion_history(get_settings(data_dir=copy))


# ---- the same guarantees on the services profile, on a small bed instead of a soak --------

BED_WINDOWS = {
    "stream_hours": 6.0, "dead_letters_days": 0.5, "predictions_days": 0.5, "caller_predictions_days": 0.5,
    "events_days": 0.5, "reports_days": 0.25, "online_days": 0.25, "candidates_days": 0.5,
    "archive_days": 0.5, "offline_days": 0.5, "champion_history": 2,
}  # fmt: skip


def _bed(s: Settings) -> int:
    """Two days of event time in every store of `s`, and four registry versions trained on
    hours 0-6, 4-10, 20-30 and 36-47: v1, v3 and v4 promoted in turn, v2 never. Returns the
    retention clock (the end): then v1 is past the history (2), v1 and v2 past the window."""
    import pandas as pd

    from rtml.aggregate.clock import current_boundary
    from rtml.archive.parquet_lake import archive_pending
    from rtml.features.dataset import FEATURE_COLUMNS, build_training_frame, minutes_from_totals
    from rtml.features.offline import to_source_frame
    from rtml.features.writer import FeatureStoreSink
    from rtml.model import registry
    from rtml.model.gbm import GBMParams, QuantileGBM
    from rtml.monitoring.events import EventLog
    from rtml.serving.prediction_log import PredictionRecord, PredictionStore
    from rtml.sources.deadletters import open_ingest_store
    from rtml.stream import open_stream

    hours = 48
    with open_stream(s) as stream:
        stream.append(_events(2 * hours, HOUR_MS // 2))
        last = stream.read(None, 1000)[-1][0]
        stream.commit("aggregator", last)
        stream.commit("archiver", last)
    archive_pending(s)
    with open_ingest_store(s) as ingest:
        for h in range(hours):
            ingest.record([DeadLetter(f"bad {h}", "bad", "test", 0)], {"dead_letters": 1}, T0 + h * HOUR_MS)
    store = PredictionStore(s)
    try:
        at = [T0 + h * HOUR_MS for h in range(hours)]
        store.write([PredictionRecord(0, "1", m, m, 1.0, 2.0, 3.0, 0.1, k) for m in at for k in ("pipeline", "online")], {})
    finally:
        store.close()
    log = EventLog(s)
    try:
        for h in range(hours):
            log.record("drift.ok", time_ms=T0 + h * HOUR_MS, key=f"drift@{h}")
    finally:
        log.close()
    n = hours * 60
    start = pd.Timestamp(T0, unit="ms", tz="UTC")
    minutes = minutes_from_totals(pd.date_range(start, periods=n, freq="min"), np.full(n, 3), np.arange(n) % 97 * 10 + 30)
    sink = FeatureStoreSink(s)
    try:  # all of it offline; online (Feast pushes cost ~10 ms a minute) the last ten hours
        sink.offline.upsert(to_source_frame(minutes))
        sink.write_frame(minutes.tail(600))
    finally:
        sink.close()
    frame = build_training_frame(minutes, horizon=s.model.horizon_min)
    for i, (a, b) in enumerate([(0, 6), (4, 10), (20, 30), (36, 47)]):
        part = frame[(frame["asof"] >= start + pd.Timedelta(hours=a)) & (frame["asof"] < start + pd.Timedelta(hours=b))]
        model = QuantileGBM(FEATURE_COLUMNS, GBMParams(n_estimators=5, num_leaves=4, seed=i), n_jobs=1).fit(part)
        run = registry.client(s).create_run(registry.experiment_id(s), run_name=f"bed-{i}")
        tags = {"train_start": part["asof"].min().isoformat(), "train_end": part["asof"].max().isoformat()}
        version = registry.log_candidate(s, model, part.head(50), run.info.run_id, tags)
        registry.client(s).set_terminated(run.info.run_id)
        if i != 1:
            token = current_boundary.set(T0 + b * HOUR_MS)  # events on the clock, as the scheduler's
            try:
                registry.promote(s, version, reason="bed")
            finally:
                current_boundary.reset(token)
    return T0 + hours * HOUR_MS


@pytest.mark.slow
def test_services_kill_9_in_the_middle_of_retention_keeps_the_champion_history_with_artifacts(
    services_settings: Settings, tmp_path: Path
) -> None:
    """The soak tests' kill -9 and registry checks on the services profile (Redis, PostgreSQL,
    MLflow on PostgreSQL): retention killed at a random moment inside its run, then run again,
    ends with the stores of an uninterrupted run on an identical bed in another namespace; the
    champion and its history load from their artifacts, and nothing else is left."""
    from rtml.model.registry import champion_history, list_versions, load_version
    from rtml.ops.purge import execute_purge, plan_purge
    from rtml.ops.retention import run_retention, store_stats

    killed = services_settings
    killed.retention = killed.retention.model_copy(update=BED_WINDOWS)
    reference = get_settings(data_dir=tmp_path / "reference")
    reference.retention = reference.retention.model_copy(update=BED_WINDOWS)
    assert reference.namespace != killed.namespace
    try:
        t = _bed(killed)
        assert _bed(reference) == t
        started = time.monotonic()
        run_retention(reference, t)
        whole_s = time.monotonic() - started

        env = {**os.environ, **{f"RTML_RETENTION__{k.upper()}": str(v) for k, v in BED_WINDOWS.items()}}
        code = (
            "from rtml.config import get_settings; from rtml.ops.retention import run_retention, store_stats;"
            f"s = get_settings(); store_stats(s); print('ready', flush=True); run_retention(s, {t})"
        )  # store_stats first: imports and connections are warm before the moment is drawn
        proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(random.uniform(0.0, 1.0) * whole_s)  # a random moment inside the run, not a wait for it
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        for version in champion_history(killed):  # the history survives mid-run too
            load_version(killed, version)
        run_retention(killed, t)

        def stores(s: Settings) -> dict[str, tuple[int, str | None]]:
            return {x["name"]: (x["rows"], x["oldest"]) for x in store_stats(s)}  # type: ignore[misc]

        assert stores(killed) == stores(reference)
        assert stores(killed)["registry"][0] == 2 and stores(killed)["stream"][0] == 12
        assert champion_history(killed) == champion_history(reference) == ["3", "4"]
        shutil.rmtree(killed.root / "mlflow" / "cache", ignore_errors=True)
        for version in champion_history(killed):
            assert load_version(killed, version).version == version  # from the registry's artifacts
        assert sorted(v["version"] for v in list_versions(killed)) == ["3", "4"]
    finally:
        execute_purge(reference, plan_purge(reference, services=True))
