"""The connection to MLflow: the tracking store's URI for the profile, one client per store, and
whether a registry exists yet (asking MLflow would create one).

Embedded: `sqlite:///<data_dir>/mlflow/mlflow.db`. Services: PostgreSQL with every MLflow
table inside the schema `settings.namespace` (the connection's search_path), so `rtml down
--purge` finds them. Artifacts live under `<data_dir>/mlflow/artifacts` in both profiles.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from rtml.config import Settings
from rtml.storage import pg_connect

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

_clients: dict[str, MlflowClient] = {}
_lock = threading.Lock()


def quiet_mlflow() -> None:
    """No telemetry, no tracking of users (NOTES.md: MLflow otherwise calls out)."""
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    os.environ["DO_NOT_TRACK"] = "1"
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow's own SQL store still uses a loader SQLAlchemy deprecated: noise to our users.
    warnings.filterwarnings("ignore", message="The ``noload`` loader strategy is deprecated")
    # MLflow logs every failed query with its traceback before raising it; rtml reports what
    # it raises (serving polls the registry every second: an outage would flood the log).
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


def tracking_uri(settings: Settings) -> str:
    """MLflow's tracking and registry store for the profile's `registry` backend."""
    if (db := registry_file(settings)) is None:
        parts = urlsplit(settings.postgres_dsn)
        query = dict(parse_qsl(parts.query))
        query["options"] = f"-csearch_path={settings.namespace}"
        return urlunsplit(("postgresql+psycopg", parts.netloc, parts.path, urlencode(query), ""))
    return f"sqlite:///{db}"


def registry_file(settings: Settings) -> Path | None:
    """The registry's SQLite file, or None when the registry is a service (PostgreSQL)."""
    return settings.path("mlflow", "mlflow.db") if settings.backend("registry") == "sqlite" else None


def artifact_root(settings: Settings) -> str:
    return settings.folder("mlflow", "artifacts").as_uri()


def client(settings: Settings) -> MlflowClient:
    """One client per tracking store (MLflow creates the tables on first use).

    The first use in each process runs MLflow's schema migrations, under a lock file of the data
    directory: under `rtml up` serving and the scheduler both open the registry, and two
    migrations at once collided ("table _alembic_tmp_experiments already exists"), leaving a
    database that no process could open again.
    """
    import fcntl

    quiet_mlflow()
    uri = tracking_uri(settings)
    with _lock:
        if uri not in _clients:
            from mlflow.tracking import MlflowClient

            with open(settings.folder("mlflow") / ".migrate.lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if registry_file(settings) is None:
                    pg_connect(settings).close()  # the namespace's schema, where MLflow's tables go
                made = MlflowClient(tracking_uri=uri, registry_uri=uri)
                made.search_registered_models(max_results=1)  # the registry's store migrates here
            _clients[uri] = made
        return _clients[uri]


def registry_absent(settings: Settings) -> bool:
    """No registry yet: reading must not create one (MLflow's migrations take 5-20 s)."""
    return tracking_uri(settings) not in _clients and not registry_exists(settings)


def registry_exists(settings: Settings) -> bool:
    """Whether an MLflow registry was ever created. Asking a registry anything creates it (10-20 s
    of schema migrations), too much for a question whose answer would be "no champion"."""
    uri = tracking_uri(settings)
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).exists()
    import psycopg

    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        row = conn.execute("SELECT to_regclass(%s)", (f'"{settings.namespace}".registered_models',)).fetchone()
    return row is not None and row[0] is not None
