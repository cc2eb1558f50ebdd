"""The feature store on both profiles (embedded: SQLite + DuckDB; services: real Redis + PostgreSQL).

One suite, parametrised over the profiles: idempotent writes (latest revision wins, offline
exactly one row per minute even after a SIGKILLed writer), the online window read, and the
ETL's point-in-time correctness on a real replay (no feature of row t changes when every
minute closed after t is rewritten; labels sit exactly `horizon` minutes ahead).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rtml.aggregate.reference import load_replay, reference_minutes
from rtml.config import Settings
from rtml.features.dataset import FEATURE_COLUMNS, history_minutes, minutes_frame
from rtml.features.etl import build_dataset
from rtml.features.feast_repo import online_redis_keys, project_name, teardown
from rtml.features.offline import open_offline, read_minutes_df
from rtml.features.online import OnlineMinutes
from rtml.features.online_keys import online_count
from rtml.features.writer import FeatureStoreSink, feature_counters

REPLAY = "utx-2020-11-24.jsonl.gz"
MINUTE = pd.Timedelta(minutes=1)


@pytest.fixture(scope="module")
def replay_minutes(shared_data: Path) -> pd.DataFrame:
    """The real recording's last 12 hours (its dense part, real timing), aggregated per minute."""
    minutes = minutes_frame(list(reference_minutes(load_replay(shared_data / REPLAY))))
    return minutes[minutes["minute"] >= minutes["minute"].iloc[-1] - pd.Timedelta(hours=12)].reset_index(
        drop=True
    )


def _sink(settings: Settings) -> FeatureStoreSink:
    return FeatureStoreSink(settings)


def test_writes_are_idempotent_and_the_latest_revision_wins(
    backend_settings: Settings, replay_minutes: pd.DataFrame
) -> None:
    minutes = replay_minutes.iloc[:300].copy()
    minutes.loc[280, ["tx_count", "fee_total_sat", "fee_avg_sat"]] = [0, 0, np.nan]  # an empty minute
    sink = _sink(backend_settings)
    try:
        sink.write_frame(minutes)
        sink.write_frame(minutes)  # a retried delivery
        newer = minutes.iloc[[120, 299]].copy()
        newer["tx_count"] += 1000
        newer["fee_avg_sat"] = 4242.0
        newer["revision"] = 2
        sink.write_frame(newer)
        sink.write_frame(minutes.iloc[[120]])  # a stale revision arriving late changes nothing
        assert open_offline(backend_settings).count() == (300, 300)
        stored = read_minutes_df(backend_settings)
        expected = minutes.copy()
        expected.loc[[120, 299], ["tx_count", "fee_avg_sat", "revision"]] = newer[
            ["tx_count", "fee_avg_sat", "revision"]
        ].to_numpy()
        pd.testing.assert_frame_equal(stored, expected.astype(stored.dtypes.to_dict()))
        # range reads: start inclusive, end exclusive
        part = read_minutes_df(backend_settings, minutes["minute"].iloc[10], minutes["minute"].iloc[20])
        assert list(part["minute"]) == list(minutes["minute"].iloc[10:20])

        reader = OnlineMinutes(backend_settings, sink.store)
        window = reader.last()
        k = backend_settings.features.online_minutes
        pd.testing.assert_frame_equal(window, expected.tail(k).reset_index(drop=True), check_dtype=False)
        assert window["revision"].iloc[-1] == 2 and window["fee_avg_sat"].iloc[-1] == 4242.0
        assert np.isnan(window.set_index("minute").loc[minutes["minute"].iloc[280], "fee_avg_sat"])
        # an explicit end reads minute keys: the revised minute 120 online too, a range with k > window
        asof = minutes["minute"].iloc[121]
        around = reader.last(3, end=asof)
        assert list(around["minute"]) == list(minutes["minute"].iloc[118:121])
        assert around["revision"].iloc[-1] == 2 and around["tx_count"].iloc[-1] == newer["tx_count"].iloc[0]
        assert len(reader.last(k + 30)) == k + 30
        assert online_count(backend_settings) == 300
        counters = feature_counters(backend_settings)
        assert counters["writes"] == 4 and counters["rows_written"] == 603
        assert counters["offline_rows"] == counters["offline_minutes"] == 300
        assert counters["head_lag_s"] > 0 and counters["last_write_time_s"] > 0
    finally:
        sink.close()


def test_online_window_shows_gaps_as_absent_minutes(
    backend_settings: Settings, replay_minutes: pd.DataFrame
) -> None:
    minutes = replay_minutes.iloc[:100].drop(index=[95, 96])
    sink = _sink(backend_settings)
    try:
        sink.write_frame(minutes)
        window = OnlineMinutes(backend_settings, sink.store).last(10)
        want = replay_minutes["minute"].iloc[90:100].drop(index=[95, 96])
        assert list(window["minute"]) == list(want)
        assert (window["event_time"] == window["minute"] + MINUTE).all()
    finally:
        sink.close()


WRITER = textwrap.dedent(
    """
    import sys
    import pandas as pd
    from rtml.config import get_settings
    from rtml.features.writer import FeatureStoreSink, feature_counters

    minutes = pd.read_parquet(sys.argv[1])
    sink = FeatureStoreSink(get_settings())
    sink.store  # open Feast before the first write
    print("ready", flush=True)
    for i in range(0, len(minutes), 60):
        sink.write_frame(minutes.iloc[i : i + 360])  # overlapping batches, several days each time
        print(i, flush=True)
    sink.close()
    print("done", flush=True)
    """
)


def test_offline_holds_one_row_per_minute_after_a_sigkilled_writer(
    backend_settings: Settings, replay_minutes: pd.DataFrame, tmp_path: Path
) -> None:
    # Three days of minutes so each write rewrites several day partitions.
    minutes = replay_minutes.iloc[:720].copy()
    minutes["minute"] = minutes["minute"] + pd.to_timedelta(np.arange(len(minutes)) * 5, unit="min")
    minutes["event_time"] = minutes["minute"] + MINUTE
    source = tmp_path / "minutes.parquet"
    minutes.to_parquet(source)
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(source)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    lines = [proc.stdout.readline().strip() for _ in range(3)]  # ready, then two batches written
    assert lines[0] == "ready", proc.stderr.read() if proc.stderr else ""
    proc.send_signal(signal.SIGKILL)  # in the middle of the third write
    assert proc.wait(timeout=30) == -signal.SIGKILL
    offline = open_offline(backend_settings)
    rows, distinct = offline.count()
    assert 0 < rows == distinct < len(minutes)  # partial, yet never a minute twice
    # The retry (the engine re-delivers its outbox) converges to exactly one row per minute.
    sink = _sink(backend_settings)
    try:
        sink.write_frame(minutes)
        assert offline.count() == (len(minutes), len(minutes))
        assert not list(backend_settings.root.glob("**/*.tmp"))
        stored = read_minutes_df(backend_settings)
        pd.testing.assert_frame_equal(stored, minutes.reset_index(drop=True).astype(stored.dtypes.to_dict()))
        window = OnlineMinutes(backend_settings, sink.store).last(60)
        assert window["minute"].iloc[-1] == minutes["minute"].iloc[-1]
    finally:
        sink.close()


def _row_from_scratch(known: pd.DataFrame, asof: pd.Timestamp, horizon: int) -> dict[str, float]:
    """Some features and the label recomputed directly from a minute -> values map."""
    fee = known["fee_avg_sat"]
    last = asof - MINUTE
    out = {f"fee_avg_sat_lag{k}": fee.get(last - (k - 1) * MINUTE, np.nan) for k in (1, 2, 15)}
    out["tx_count_lag3"] = known["tx_count"].get(last - 2 * MINUTE, np.nan)
    recent = fee[(fee.index > last - 15 * MINUTE) & (fee.index <= last)].dropna()
    out["fee_avg_sat_mean15"] = recent.mean() if len(recent) else np.nan
    out["fee_avg_sat_spread15"] = recent.max() - recent.min() if len(recent) else np.nan
    span = known.loc[(known.index > last - history_minutes(15) * MINUTE) & (known.index <= last)]
    out["n_missing"] = history_minutes(15) - len(span)
    out["label"] = fee.get(last + horizon * MINUTE, np.nan)
    return out


def test_training_set_is_point_in_time_correct_on_a_real_replay(
    backend_settings: Settings, replay_minutes: pd.DataFrame, tmp_path: Path
) -> None:
    horizon = 5
    gap = replay_minutes.index[200:204]  # the pipeline was down four minutes
    minutes = replay_minutes.drop(index=gap).reset_index(drop=True)
    sink = _sink(backend_settings)
    try:
        sink.write_frame(minutes)
        start, end = minutes["minute"].iloc[0], minutes["minute"].iloc[-1] + MINUTE
        card = build_dataset(
            backend_settings, start, end, horizon=horizon, out=tmp_path / "a.parquet", store=sink.store
        )
        frame = pd.read_parquet(card["path"]).set_index("asof")
        assert card["rows"] == len(frame) > 600
        assert json.loads(Path(card["card_path"]).read_text())["rows"] == len(frame)
        assert card["missing_minutes"]["count"] == len(gap)
        assert card["minutes_outside_store"] == history_minutes(15) + horizon
        assert [
            replay_minutes["minute"].iloc[200].isoformat(),
            replay_minutes["minute"].iloc[203].isoformat(),
        ] in (card["missing_minutes"]["ranges"])
        # Labels: exactly `horizon` minutes after the last closed minute, equal to the stored value.
        known = minutes.set_index("minute")
        assert (frame["target_minute"] == frame.index - MINUTE + horizon * MINUTE).all()
        assert np.array_equal(
            frame["label"].to_numpy(), known.loc[frame["target_minute"], "fee_avg_sat"].to_numpy()
        )
        # Every row against a from-scratch computation over the minutes closed by its as-of time.
        for asof in frame.index[::7]:
            want = _row_from_scratch(known[known["event_time"] <= asof], asof, horizon)
            want["label"] = known["fee_avg_sat"].get(asof - MINUTE + horizon * MINUTE, np.nan)
            got = frame.loc[asof, list(want)].astype("float64").to_numpy()
            np.testing.assert_allclose(
                got, np.array(list(want.values()), dtype="float64"), rtol=1e-9, equal_nan=True
            )

        # Rewrite every minute closed after t (a newer revision with other values): row t and all
        # rows before it keep every feature; the labels reaching past t change.
        for cut in (150, 420):
            t = minutes["event_time"].iloc[cut]
            later = minutes[minutes["event_time"] > t].copy()
            later["tx_count"] = later["tx_count"] * 3 + 7
            later["fee_total_sat"] = later["fee_total_sat"] * 5 + 1
            later["fee_avg_sat"] = later["fee_avg_sat"] * 2.5 + 11
            later["revision"] += 1
            sink.write_frame(later)
            minutes.loc[later.index] = later
            assert open_offline(backend_settings).count() == (len(minutes), len(minutes))
            again = build_dataset(
                backend_settings,
                start,
                end,
                horizon=horizon,
                out=tmp_path / f"b{cut}.parquet",
                store=sink.store,
            )
            moved = pd.read_parquet(again["path"]).set_index("asof")
            before = frame.index[frame.index <= t]
            pd.testing.assert_frame_equal(
                moved.loc[before, FEATURE_COLUMNS], frame.loc[before, FEATURE_COLUMNS]
            )
            reaching = before[before - MINUTE + horizon * MINUTE >= t]
            assert len(reaching) and (moved.loc[reaching, "label"] != frame.loc[reaching, "label"]).any()
            after = frame.index[frame.index > t]
            assert (moved.loc[after, "fee_avg_sat_lag1"] != frame.loc[after, "fee_avg_sat_lag1"]).any()
            frame = moved
    finally:
        sink.close()


def test_dataset_build_command(
    backend_settings: Settings, replay_minutes: pd.DataFrame, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from rtml.cli import app

    sink = _sink(backend_settings)
    try:
        sink.write_frame(replay_minutes.iloc[:200])
    finally:
        sink.close()
    start = replay_minutes["minute"].iloc[70]
    end = replay_minutes["minute"].iloc[150]
    out = tmp_path / "set.parquet"
    result = CliRunner().invoke(
        app,
        ["dataset", "build", "--start", start.strftime("%Y-%m-%dT%H:%M"), "--end", end.isoformat(),
         "--horizon", "3", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out)
    card = json.loads(out.with_suffix(".card.json").read_text())
    assert frame["asof"].min() == start and frame["asof"].max() == end
    assert card["rows"] == len(frame) and card["horizon_min"] == 3
    assert (frame["target_minute"] == frame["asof"] - MINUTE + 3 * MINUTE).all()
    bad = CliRunner().invoke(app, ["dataset", "build", "--start", "yesterday", "--end", end.isoformat()])
    assert bad.exit_code != 0 and "ISO-8601" in bad.output


def test_services_state_stays_in_the_namespace(
    services_settings: Settings, replay_minutes: pd.DataFrame
) -> None:
    import psycopg

    # Reading a pipeline that never wrote finds nothing and creates nothing.
    assert read_minutes_df(services_settings).empty
    assert feature_counters(services_settings)["offline_rows"] == 0
    with psycopg.connect(services_settings.postgres_dsn) as conn:
        schema = conn.execute(
            "SELECT 1 FROM information_schema.schemata WHERE schema_name = %s", (services_settings.namespace,)
        ).fetchone()
    assert schema is None
    sink = _sink(services_settings)
    try:
        sink.write_frame(replay_minutes.iloc[:30])
    finally:
        sink.close()
    import redis

    client = redis.Redis.from_url(services_settings.redis_url)
    decoy = b"someone_else_" + project_name(services_settings).encode()  # merely ends like our keys
    client.set(decoy, b"x", ex=60)
    keys = online_redis_keys(services_settings)
    assert len(keys) == 31 and decoy not in keys  # 30 minutes + the window, exactly
    client.delete(decoy)
    with psycopg.connect(services_settings.postgres_dsn) as conn:
        tables = {r[0] for r in conn.execute(
            "SELECT table_schema FROM information_schema.tables WHERE table_name = 'minute_features'"
        )}  # fmt: skip
    assert services_settings.namespace in tables
    teardown(services_settings)
    assert online_redis_keys(services_settings) == []


def test_features_show_reads_the_feature_store(
    backend_settings: Settings, replay_minutes: pd.DataFrame
) -> None:
    from typer.testing import CliRunner

    from rtml.cli import app

    minutes = replay_minutes.iloc[:20].copy()
    minutes.loc[minutes.index[-1], ["fee_avg_sat", "revision"]] = [12.5, 3]
    sink = _sink(backend_settings)
    try:
        sink.write_frame(minutes)  # only the feature store has these minutes, not the engine's table
    finally:
        sink.close()
    result = CliRunner().invoke(app, ["features", "show", "--last", "2", "--format", "json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert [r["minute"] for r in shown] == [
        m.strftime("%Y-%m-%dT%H:%M:%SZ") for m in minutes["minute"].iloc[-2:]
    ]
    assert shown[-1]["fee_avg_sat"] == 12.5 and shown[-1]["revision"] == 3


def test_feasts_own_cli_reads_the_repo(backend_settings: Settings) -> None:
    """Feast's own CLI on the repository rtml generates (definitions, feature_store.yaml with the
    DSN's TLS mode, the file or PostgreSQL registry): what we expose passes Feast's checker."""
    import os

    from rtml.features.dataset import minutes_from_totals
    from rtml.features.feast_repo import MINUTE_VIEW, WINDOW_VIEW, repo_dir

    settings = backend_settings
    start = pd.Timestamp("2024-10-01T00:00:00Z")
    sink = _sink(settings)
    sink.write_frame(minutes_from_totals(pd.date_range(start, periods=30, freq="min"), [100] * 30, [500_000] * 30))
    sink.close()
    feast = Path(sys.executable).with_name("feast")
    env = {**os.environ, "FEAST_USAGE": "False"}
    for command in (["feature-views", "list"], ["entities", "list"]):
        out = subprocess.run(
            [str(feast), "-c", str(repo_dir(settings)), *command], capture_output=True, text=True, timeout=180, env=env
        )
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        names = (MINUTE_VIEW, WINDOW_VIEW) if command[0] == "feature-views" else ("minute", "chain")
        assert all(name in out.stdout for name in names), out.stdout
