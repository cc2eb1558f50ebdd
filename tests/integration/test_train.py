"""Training end to end on a real MLflow store (SQLite embedded, PostgreSQL services): a learnable
signal is promoted, pure noise is refused, the registry's alias moves and rolls back; the bootstrap
champion is a calibrated baseline, replaced by a model only through the gate; a registry error is
never taken for "no champion"."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from typer.testing import CliRunner

from rtml.config import Settings, get_settings
from rtml.features.dataset import FEATURE_COLUMNS, build_training_frame, minutes_from_totals
from rtml.features.writer import FeatureStoreSink
from rtml.model import registry
from rtml.model.backtest import backtest
from rtml.model.baselines import BASELINE_NAMES, SERVABLE, servable_factories
from rtml.model.gbm import GBMParams
from rtml.model.train import bootstrap_champion, compare_with_champion, train
from rtml.monitoring.events import EventLog

START = pd.Timestamp("2024-10-01", tz="UTC")
FAST = GBMParams(n_estimators=40, min_data_in_leaf=40)


def signal_minutes(n: int, seed: int, start: pd.Timestamp = START) -> pd.DataFrame:
    """The average fee of minute m is set by the transaction count of minute m-5, which the model
    sees as `tx_count_lag1` and no baseline uses, times a little noise."""
    rng = np.random.default_rng(seed)
    tx = rng.poisson(100, n + 5)
    z = (tx - 100) / 10
    avg = 5000 * np.exp(0.5 * z[:-5]) * rng.lognormal(0, 0.15, n)
    return _frame(tx[5:], avg, start)


def noise_minutes(n: int, seed: int, start: pd.Timestamp = START) -> pd.DataFrame:
    """Independent minutes: nothing to learn beyond the level and spread."""
    rng = np.random.default_rng(seed)
    return _frame(rng.poisson(100, n), rng.lognormal(8.5, 0.5, n), start)


def _frame(tx: np.ndarray, avg: np.ndarray, start: pd.Timestamp) -> pd.DataFrame:
    minute = pd.date_range(start, periods=len(tx), freq="min")
    total = np.rint(tx * avg).astype(np.int64)
    return minutes_from_totals(minute, tx, total)


@pytest.fixture(scope="session")
def empty_mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite store with its tables created once (MLflow's migrations take seconds)."""
    settings = get_settings(data_dir=tmp_path_factory.mktemp("mlflow-template"), profile="embedded")
    registry.client(settings)
    return settings.path("mlflow", "mlflow.db")


@pytest.fixture
def embedded(data_dir: Path, empty_mlflow_db: Path) -> Settings:
    settings = get_settings()
    shutil.copyfile(empty_mlflow_db, settings.path("mlflow", "mlflow.db"))
    return settings


@pytest.fixture
def backend(backend_settings: Settings, request: pytest.FixtureRequest) -> Settings:
    """Both profiles; the embedded one starts from a ready (migrated) MLflow database."""
    if backend_settings.profile == "embedded":
        shutil.copyfile(request.getfixturevalue("empty_mlflow_db"), backend_settings.path("mlflow", "mlflow.db"))
    return backend_settings


def test_a_learnable_signal_is_promoted_and_the_alias_can_move_back(backend: Settings) -> None:
    settings = backend
    minutes = signal_minutes(2000, seed=1)
    result = train(settings, minutes=minutes, params=FAST)

    model_wql = result.backtest.summary["lightgbm"].wql
    assert set(result.backtest.summary) - {"lightgbm"} == set(BASELINE_NAMES) - set(result.backtest.skipped)
    for name, m in result.backtest.summary.items():
        if name != "lightgbm":
            assert model_wql < 0.7 * m.wql, (name, model_wql, m.wql)
    assert len(result.backtest.folds) >= 5
    assert result.promoted, result.decision.reasons
    assert registry.champion_version(settings) == result.version == "1"

    info = registry.champion_info(settings)
    assert info is not None
    assert info["train_start"] == START.isoformat()
    assert info["train_end"] == (START + pd.Timedelta(minutes=2000)).isoformat()
    assert info["metrics"]["wql"] == pytest.approx(model_wql)
    assert registry.champion_training_window(settings) == (
        START.to_pydatetime(),
        (START + pd.Timedelta(minutes=2000)).to_pydatetime(),
    )

    # serving's fast path and plain MLflow pyfunc (by alias) give the same sorted quantiles
    frame = build_training_frame(minutes).tail(20)
    loaded = registry.load_champion(settings)
    fast = loaded.predict(frame[FEATURE_COLUMNS])
    assert (np.diff(fast, axis=1) >= 0).all()
    import mlflow.pyfunc

    pyfunc = mlflow.pyfunc.load_model(f"models:/{registry.MODEL_NAME}@{registry.CHAMPION}")
    np.testing.assert_allclose(pyfunc.predict(frame[FEATURE_COLUMNS]).to_numpy(), fast)
    assert [c.name for c in pyfunc.metadata.get_input_schema().inputs] == FEATURE_COLUMNS
    run = registry.client(settings).get_run(result.run_id)
    artifacts = {a.path for a in registry.client(settings).list_artifacts(result.run_id)}
    assert {"backtest.png", "backtest_predictions.csv"} <= artifacts
    assert run.data.tags["gate.decision"] == "promoted"

    # a second candidate on the following days is judged against the champion on its recent folds
    later = signal_minutes(2000, seed=2, start=START + pd.Timedelta(minutes=2000))
    second = train(settings, minutes=pd.concat([minutes, later], ignore_index=True), params=FAST)
    assert second.decision.champion is not None and second.decision.champion.version == "1"
    assert second.decision.champion.folds, "folds after the champion's training window"

    cli = CliRunner()
    from rtml.cli import app

    env = {"RTML_PROFILE": settings.profile}
    out = cli.invoke(app, ["model", "promote", "2"], env=env)
    assert out.exit_code == 0, out.output
    assert registry.champion_version(settings) == "2"
    listing = cli.invoke(app, ["model", "list"], env=env)
    assert listing.exit_code == 0 and "promoted" in listing.output
    out = cli.invoke(app, ["model", "rollback"], env=env)
    assert out.exit_code == 0, out.output
    assert registry.champion_version(settings) == "1"
    assert cli.invoke(app, ["model", "rollback"], env=env).exit_code == 1  # nothing before v1
    assert cli.invoke(app, ["model", "promote", "99"], env=env).exit_code == 1

    log = EventLog(settings)
    kinds = [e.kind for e in log.recent(prefix="model.")]
    log.close()
    assert kinds[:2] == ["model.gate", "model.promoted"]
    assert kinds[-2:] == ["model.promoted", "model.rollback"]
    counters = registry.model_counters(settings)
    assert counters["trainings"] == 2 and counters["rollbacks"] == 1 and counters["champion_version"] == 1
    assert counters["promotions"] == kinds.count("model.promoted")
    assert counters["champion_wql"] == pytest.approx(model_wql)

    if settings.profile == "services":
        import psycopg

        with psycopg.connect(settings.postgres_dsn) as conn:
            schemas = {
                r[0]
                for r in conn.execute(
                    "SELECT table_schema FROM information_schema.tables WHERE table_name = 'registered_model_aliases'"
                )
            }
        assert settings.namespace in schemas


def test_pure_noise_is_refused_by_the_gate(embedded: Settings) -> None:
    settings = embedded
    result = train(settings, minutes=noise_minutes(2500, seed=3), params=FAST)
    assert not result.promoted
    assert result.decision.gain_vs_baseline < settings.model.min_gain_vs_baseline
    assert "< required" in result.decision.reasons[0]
    assert registry.champion_version(settings) is None
    versions = registry.list_versions(settings)
    assert [v["gate"] for v in versions] == ["rejected"]
    log = EventLog(settings)
    kinds = [e.kind for e in log.recent(prefix="model.")]
    log.close()
    assert kinds == ["model.gate", "model.rejected"]
    counters = registry.model_counters(settings)
    assert counters["rejections"] == 1 and counters["promotions"] == 0 and counters["champion_version"] == 0
    assert os.environ.get("MLFLOW_DISABLE_TELEMETRY") == "true"


def test_rtml_train_reads_the_training_set_through_the_etl(embedded: Settings) -> None:
    """`rtml train --end T` on the feature store: Feast point-in-time rows, no minute at or after T."""
    from rtml.cli import app
    from rtml.features.writer import FeatureStoreSink

    settings = embedded
    minutes = signal_minutes(2200, seed=5)
    FeatureStoreSink(settings).write_frame(minutes)
    end = START + pd.Timedelta(minutes=2000)
    out = CliRunner().invoke(app, ["train", "--end", end.isoformat()])
    assert out.exit_code == 0, out.output
    assert "promoted to champion" in out.output and "rolling_mean_15" in out.output
    info = registry.champion_info(settings)
    assert info is not None and info["train_end"] == end.isoformat()
    client = registry.client(settings)
    card = client.download_artifacts(info["run_id"], "dataset_card.json")
    assert "feast get_historical_features" in Path(card).read_text()
    bad = CliRunner().invoke(app, ["train", "--start", "yesterday"])
    assert bad.exit_code != 0 and "not an ISO time" in bad.output


def test_asking_an_absent_registry_does_not_create_it(settings: Settings) -> None:
    """Serving, drift and `rtml status` poll the champion; a fresh data directory has no registry."""
    assert registry.champion_version(settings) is None
    assert registry.champion_info(settings) is None
    assert registry.list_versions(settings) == []
    with pytest.raises(LookupError):
        registry.rollback(settings)
    assert registry.model_counters(settings)["trainings"] == 0
    assert not registry.registry_exists(settings)
    assert not settings.path("mlflow", "mlflow.db").exists()


def test_processes_opening_a_fresh_registry_at_once_migrate_it_one_at_a_time(settings: Settings) -> None:
    """Under `rtml up` serving and the scheduler open a new registry together: unserialised, their
    two schema migrations collided and left a database no process could open again."""
    import subprocess
    import sys

    code = "from rtml.config import get_settings; from rtml.model import registry; registry.experiment_id(get_settings())"
    procs = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    with sqlite3.connect(settings.path("mlflow", "mlflow.db")) as db:
        assert not db.execute("SELECT name FROM sqlite_master WHERE name LIKE '_alembic_tmp%'").fetchall()
    assert registry.champion_version(settings) is None and registry.list_versions(settings) == []


def _at(minutes: int) -> pd.Timestamp:
    return START + pd.Timedelta(minutes=minutes)


def test_a_baseline_is_champion_until_a_model_passes_the_gate(backend: Settings) -> None:
    settings = backend
    minutes = signal_minutes(2200, seed=11)
    FeatureStoreSink(settings).write_frame(minutes)

    too_early = _at(settings.model.min_baseline_minutes - 1).to_pydatetime()
    assert bootstrap_champion(settings, too_early) is None
    assert registry.champion_version(settings) is None

    boot = bootstrap_champion(settings, _at(90).to_pydatetime())
    assert boot is not None and boot["kind"] == "baseline" and boot["baseline"] in SERVABLE
    assert registry.champion_version(settings) == boot["version"]
    assert registry.champion_kind(settings) == "baseline"
    assert not registry.has_trained_model(settings)
    info = registry.champion_info(settings)
    assert info is not None and info["baseline"] == boot["baseline"] and info["gate"] == "bootstrap"
    # trained on the minutes before `end` only
    assert pd.Timestamp(info["train_end"]) <= _at(90)
    assert bootstrap_champion(settings, _at(120).to_pydatetime()) is None, "only the gate moves a champion"

    # served like a model: the fast path and MLflow's own pyfunc agree, quantiles sorted, >= 0
    rows = build_training_frame(minutes).iloc[100:120]
    loaded = registry.load_champion(settings)
    assert loaded.kind == "baseline" and loaded.feature_columns == FEATURE_COLUMNS
    fast = loaded.predict(rows[FEATURE_COLUMNS])
    assert fast.shape == (20, 3) and (np.diff(fast, axis=1) >= 0).all() and (fast >= 0).all()
    import mlflow.pyfunc

    pyfunc = mlflow.pyfunc.load_model(f"models:/{registry.MODEL_NAME}@{registry.CHAMPION}")
    np.testing.assert_allclose(pyfunc.predict(rows[FEATURE_COLUMNS]).to_numpy(), fast)

    # the first model faces the gate's champion rule against the baseline champion
    result = train(settings, end=_at(2200).to_pydatetime(), params=FAST)
    assert result.decision.champion is not None and result.decision.champion.version == boot["version"]
    assert result.promoted, result.decision.reasons
    assert registry.champion_kind(settings) == "model" and registry.has_trained_model(settings)
    kinds = {v["version"]: v["kind"] for v in registry.list_versions(settings)}
    assert kinds == {boot["version"]: "baseline", result.version: "model"}

    log = EventLog(settings)
    events = [e.kind for e in log.recent(prefix="model.")]
    log.close()
    assert events == ["model.baseline", "model.promoted", "model.gate", "model.promoted"]


def test_a_model_that_does_not_beat_the_baseline_leaves_it_champion(embedded: Settings) -> None:
    settings = embedded
    FeatureStoreSink(settings).write_frame(noise_minutes(2500, seed=12))
    boot = bootstrap_champion(settings, _at(120).to_pydatetime())
    assert boot is not None
    result = train(settings, end=_at(2500).to_pydatetime(), params=FAST)
    assert not result.promoted
    assert registry.champion_version(settings) == boot["version"]
    assert registry.champion_kind(settings) == "baseline"


def test_a_registry_error_is_never_no_champion(embedded: Settings) -> None:
    """A broken registry makes the gate fail loudly instead of promoting "against no champion"."""
    settings = embedded
    minutes = signal_minutes(2000, seed=13)
    FeatureStoreSink(settings).write_frame(minutes)
    boot = bootstrap_champion(settings, _at(120).to_pydatetime())
    assert boot is not None
    db = settings.path("mlflow", "mlflow.db")
    with sqlite3.connect(db) as conn:  # a real fault in the real store
        conn.execute("ALTER TABLE registered_model_aliases RENAME TO registered_model_aliases_broken")
    frame = build_training_frame(minutes)
    baselines = backtest(frame, servable_factories(), folds=5)
    try:
        with pytest.raises(MlflowException):
            registry.champion_version_strict(settings)
        with pytest.raises(MlflowException):  # the gate's view of the champion: an error, not None
            compare_with_champion(settings, frame, baselines, "rolling_mean_15")
        with pytest.raises(MlflowException):
            train(settings, minutes=minutes, params=FAST)
    finally:
        with sqlite3.connect(db) as conn:
            conn.execute("ALTER TABLE registered_model_aliases_broken RENAME TO registered_model_aliases")
    assert registry.champion_version(settings) == boot["version"]
    assert [v["kind"] for v in registry.list_versions(settings)] == ["baseline"]
