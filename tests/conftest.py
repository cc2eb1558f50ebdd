"""Shared fixtures: an isolated data directory per test, the real services, the real recordings.

A test that needs Redis, PostgreSQL, Java, Chromium or `../shared/data` skips with the reason
when it is missing on a developer's machine, and fails when CI=true: CI must cover it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rtml.config import Settings, get_settings

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("RTML_SHARED_DATA", REPO.parent / "shared" / "data"))
IN_CI = os.environ.get("CI", "").lower() == "true"


def require(available: bool, why: str) -> None:
    """Skip with `why` where the dependency is absent, fail in CI where it must be present."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"required in CI: {why}")
    pytest.skip(why)


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh data directory, made the default for everything the test runs (subprocesses too)."""
    path = tmp_path / "rtml-data"
    monkeypatch.setenv("RTML_DATA_DIR", str(path))
    monkeypatch.setenv("RTML_PROFILE", "embedded")
    monkeypatch.setenv("RTML_CONFIG", str(tmp_path / "absent.toml"))
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("DO_NOT_TRACK", "1")
    return path


@pytest.fixture
def settings(data_dir: Path) -> Settings:
    return get_settings()


@pytest.fixture
def redis_url() -> str:
    require(_port_open("127.0.0.1", 6379), "Redis is not answering on 127.0.0.1:6379")
    return "redis://127.0.0.1:6379/0"


@pytest.fixture
def postgres_dsn() -> str:
    require(_port_open("127.0.0.1", 5432), "PostgreSQL is not answering on 127.0.0.1:5432")
    return "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture
def services_settings(
    data_dir: Path, redis_url: str, postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    """The services profile on the real Redis and PostgreSQL, in a namespace of its own."""
    monkeypatch.setenv("RTML_PROFILE", "services")
    monkeypatch.setenv("RTML_REDIS_URL", redis_url)
    monkeypatch.setenv("RTML_POSTGRES_DSN", postgres_dsn)
    settings = get_settings()
    yield settings
    # Leave nothing in the shared Redis and PostgreSQL: the same purge as `rtml down --purge`.
    from rtml.ops.purge import execute_purge, plan_purge

    execute_purge(settings, plan_purge(settings, services=True))


@pytest.fixture(params=["embedded", "services"])
def backend_settings(request: pytest.FixtureRequest, data_dir: Path) -> Settings:
    """One suite for every backend of a part (as Feast runs one universal suite on every store)."""
    name = "settings" if request.param == "embedded" else "services_settings"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real recordings beside the project (never copied into it)."""
    require(SHARED_DATA.is_dir(), f"the real recordings are not at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def java() -> str:
    path = shutil.which("java")
    require(path is not None, "Java 17+ is needed by Spark and is not on PATH")
    return str(path)


@pytest.fixture(scope="session")
def chromium() -> str:
    path = "/usr/bin/chromium"
    require(os.path.exists(path), "Debian's chromium is not installed (.ci/run installs it)")
    return path


@pytest.fixture
def artifacts_dir() -> Path:
    """Where tests leave screenshots and reports for people to look at."""
    path = REPO / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path


SERVING_TOKEN = "test-admin-token"


def seed_in_another_process() -> list[str]:
    """The serving bed, written by another process as a trainer would: the service must find the
    models through the registry alone (no MLflow state left in this process)."""
    out = subprocess.run(
        [sys.executable, "-m", "rtml.serving.seed"], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return list(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, list[str]]]:
    """The serving bed (rtml.serving.seed): a day of synthetic minutes ending now in the feature
    store and two small forecasters in MLflow, v1 champion; v1 is champion again afterwards."""
    from rtml.model import registry

    root = tmp_path_factory.getbasetemp() / "serving-bed"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RTML_DATA_DIR", str(root / "rtml-data"))
        mp.setenv("RTML_PROFILE", "embedded")
        mp.setenv("RTML_CONFIG", str(root / "absent.toml"))
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        mp.setenv("RTML_SERVING__ADMIN_TOKEN", SERVING_TOKEN)
        # The bed's newest minute is as old as the bed, which other modules may have seeded long
        # before: freshness is tested on its own (test_stale_features_get_a_clear_503...).
        mp.setenv("RTML_SERVING__MAX_FEATURE_AGE_S", str(7 * 86400))
        settings = get_settings()
        versions = seed_in_another_process()
        yield settings, versions
        if registry.champion_version(settings) != versions[0]:
            registry.promote(settings, versions[0], reason="test cleanup")


def _log_pipeline_forecasts(settings: Settings, minutes: Any, start: Any, end: Any) -> int:
    from rtml.aggregate.sinks import MinutesTable, aggregate_db_path
    from rtml.contracts import MinuteFeatures
    from rtml.serving.forecaster import Forecaster

    table = MinutesTable(aggregate_db_path(settings))
    table.upsert(
        [
            MinuteFeatures(r.minute.to_pydatetime(), int(r.tx_count), int(r.fee_total_sat),
                           None if r.fee_avg_sat != r.fee_avg_sat else float(r.fee_avg_sat),
                           r.event_time.to_pydatetime(), int(r.revision))
            for r in minutes.itertuples(index=False)
        ]
    )  # fmt: skip
    table.close()
    forecaster = Forecaster(settings)
    try:
        boundaries = range(int(start.timestamp() * 1000), int(end.timestamp() * 1000) + 1, 60_000)
        return sum(forecaster.forecast_at(t) is not None for t in boundaries)
    finally:
        forecaster.close()


@pytest.fixture
def log_pipeline_forecasts() -> Callable[[Settings, Any, Any, Any], int]:
    """`f(settings, minutes, start, end)`: put `minutes` (a frame) in the engine's table and log the
    pipeline's forecast at every minute boundary in [start, end], as the scheduler's forecast job
    does; returns how many were logged."""
    return _log_pipeline_forecasts
