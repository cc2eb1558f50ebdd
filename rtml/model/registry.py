"""MLflow tracking and registry: where candidates are logged, and where `champion` points.

Embedded: `sqlite:///<data_dir>/mlflow/mlflow.db`. Services: PostgreSQL with every MLflow
table inside the schema `settings.namespace` (the connection's search_path), so `rtml down
--purge` finds them. Artifacts live under `<data_dir>/mlflow/artifacts` in both profiles.

The registered model is `fee_forecaster`; the alias `champion` marks the serving version.
Every version carries its training window (`train_start`, `train_end`, ISO UTC) and gate
decision as tags; the registered model's tag `champion_history` (JSON list of versions, oldest
first) is what `rollback` walks back along. Serving loads the LightGBM files of the champion
directly (`load_champion`), which is far faster per row than pyfunc.
"""

from __future__ import annotations

import json
import os
import threading
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np
import pandas as pd

from rtml.config import Settings
from rtml.model.baselines import PointBaseline
from rtml.model.gbm import META_FILE, QuantileGBM

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

MODEL_NAME = "fee_forecaster"
EXPERIMENT = "fee_forecaster"
CHAMPION = "champion"
HISTORY_TAG = "champion_history"
MODEL_DIR = "model_dir"
OUTPUT_COLUMNS = ("p10", "p50", "p90")
# A version's `kind` tag: a trained model, or a calibrated baseline (the bootstrap champion).
# Versions registered before kinds existed carry no tag and are models.
KIND_TAG = "kind"
Forecaster = QuantileGBM | PointBaseline

_clients: dict[str, MlflowClient] = {}
_lock = threading.Lock()


def quiet_mlflow() -> None:
    """No telemetry, no tracking of users (NOTES.md: MLflow otherwise calls out)."""
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    os.environ["DO_NOT_TRACK"] = "1"
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow's own SQL store still uses a loader SQLAlchemy deprecated: noise to our users.
    warnings.filterwarnings("ignore", message="The ``noload`` loader strategy is deprecated")


def tracking_uri(settings: Settings) -> str:
    if settings.profile == "services":
        parts = urlsplit(settings.postgres_dsn)
        query = dict(parse_qsl(parts.query))
        query["options"] = f"-csearch_path={settings.namespace}"
        return urlunsplit(("postgresql+psycopg", parts.netloc, parts.path, urlencode(query), ""))
    return f"sqlite:///{settings.path('mlflow', 'mlflow.db')}"


def artifact_root(settings: Settings) -> str:
    return settings.folder("mlflow", "artifacts").as_uri()


def client(settings: Settings) -> MlflowClient:
    """One client per tracking store (MLflow creates the tables on first use)."""
    quiet_mlflow()
    uri = tracking_uri(settings)
    with _lock:
        if uri not in _clients:
            from mlflow.tracking import MlflowClient

            if settings.profile == "services":
                import psycopg

                with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
                    conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{settings.namespace}"')
            _clients[uri] = MlflowClient(tracking_uri=uri, registry_uri=uri)
        return _clients[uri]


def experiment_id(settings: Settings) -> str:
    c = client(settings)
    exp = c.get_experiment_by_name(EXPERIMENT)
    if exp is not None:
        return str(exp.experiment_id)
    return str(c.create_experiment(EXPERIMENT, artifact_location=artifact_root(settings)))


def _has_model(c: MlflowClient) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        c.get_registered_model(MODEL_NAME)
    except MlflowException:
        return False
    return True


def _absent(settings: Settings) -> bool:
    """No registry yet: reading must not create one (MLflow's migrations take 5-20 s)."""
    return tracking_uri(settings) not in _clients and not registry_exists(settings)


def champion_version(settings: Settings) -> str | None:
    """The version the `champion` alias points at, or None; cheap enough to poll.

    Lenient: a registry error also reads as None, which suits pollers (serving keeps its model).
    A decision that must not mistake an error for "no champion" uses `champion_version_strict`.
    """
    from mlflow.exceptions import MlflowException

    if _absent(settings):
        return None
    try:
        return str(client(settings).get_model_version_by_alias(MODEL_NAME, CHAMPION).version)
    except MlflowException:
        return None


def champion_version_strict(settings: Settings) -> str | None:
    """The champion's version; None only when the registry really has no model or no alias.

    Any other failure (a broken or unreachable registry) raises: the promotion gate must never
    promote against an unknown champion as if there were none.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

    if _absent(settings):
        return None
    try:
        model = client(settings).get_registered_model(MODEL_NAME)
    except MlflowException as exc:
        if exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return None
        raise
    version = dict(model.aliases).get(CHAMPION)
    return None if version is None else str(version)


def _version_info(c: MlflowClient, version: str, champion: str | None) -> dict[str, Any]:
    mv = c.get_model_version(MODEL_NAME, version)
    tags = dict(mv.tags)
    metrics = dict(c.get_run(mv.run_id).data.metrics) if mv.run_id else {}
    return {
        "version": str(mv.version),
        "champion": str(mv.version) == champion,
        "run_id": mv.run_id,
        "registered_ms": int(mv.creation_timestamp),
        "kind": tags.get(KIND_TAG, "model"),
        "baseline": tags.get("baseline"),
        "train_start": tags.get("train_start"),
        "train_end": tags.get("train_end"),
        "gate": tags.get("gate"),
        "gate_reasons": tags.get("gate_reasons"),
        "metrics": metrics,
    }


def champion_info(settings: Settings) -> dict[str, Any] | None:
    """The champion's version, training window (train_start/train_end, ISO UTC), gate and metrics."""
    version = champion_version(settings)
    if version is None:
        return None
    return _version_info(client(settings), version, version)


def model_info(settings: Settings, version: str) -> dict[str, Any]:
    """One version's fields (as `champion_info`), including `registered_ms`."""
    return _version_info(client(settings), version, champion_version(settings))


def champion_kind(settings: Settings) -> str | None:
    """`baseline` or `model` for the champion, None without one."""
    info = champion_info(settings)
    return None if info is None else str(info["kind"])


def has_trained_model(settings: Settings) -> bool:
    """Whether any version is a trained model (not a baseline): the first training has happened."""
    return any(v["kind"] == "model" for v in list_versions(settings))


def champion_training_window(settings: Settings) -> tuple[datetime, datetime] | None:
    """(start, end) of the data the champion was trained on, UTC, or None without a champion."""
    info = champion_info(settings)
    if info is None or not info["train_start"] or not info["train_end"]:
        return None
    return datetime.fromisoformat(info["train_start"]), datetime.fromisoformat(info["train_end"])


def list_versions(settings: Settings) -> list[dict[str, Any]]:
    """Every registered version, newest first, with the same fields as `champion_info`."""
    if _absent(settings):
        return []
    c = client(settings)
    if not _has_model(c):
        return []
    champion = champion_version(settings)
    versions = sorted(
        (int(mv.version) for mv in c.search_model_versions(f"name='{MODEL_NAME}'")), reverse=True
    )
    return [_version_info(c, str(v), champion) for v in versions]


def champion_history(settings: Settings) -> list[str]:
    if _absent(settings):
        return []
    c = client(settings)
    if not _has_model(c):
        return []
    return list(json.loads(c.get_registered_model(MODEL_NAME).tags.get(HISTORY_TAG, "[]")))


def promote(settings: Settings, version: str, reason: str = "manual") -> None:
    """Point `champion` at `version`, append it to the history, and record `model.promoted`."""
    from rtml.monitoring.events import EventLog

    c = client(settings)
    c.get_model_version(MODEL_NAME, version)  # raises if absent
    previous = champion_version(settings)
    c.set_registered_model_alias(MODEL_NAME, CHAMPION, version)
    history = champion_history(settings)
    if not history or history[-1] != version:
        history.append(version)
    c.set_registered_model_tag(MODEL_NAME, HISTORY_TAG, json.dumps(history))
    c.set_model_version_tag(MODEL_NAME, version, "promoted_at", pd.Timestamp.now(tz="UTC").isoformat())
    log = EventLog(settings)
    try:
        log.record("model.promoted", version=version, previous=previous, reason=reason)
    finally:
        log.close()


def rollback(settings: Settings) -> str:
    """Move `champion` back to the previous champion in the history; returns that version."""
    from rtml.monitoring.events import EventLog

    current = champion_version(settings)
    history = champion_history(settings)
    if current is not None and current in history:
        history = history[: len(history) - history[::-1].index(current) - 1]
    if not history:
        raise LookupError("no previous champion to roll back to")
    target = history[-1]
    c = client(settings)
    c.set_registered_model_alias(MODEL_NAME, CHAMPION, target)
    c.set_registered_model_tag(MODEL_NAME, HISTORY_TAG, json.dumps(history))
    log = EventLog(settings)
    try:
        log.record("model.rollback", version=target, previous=current)
    finally:
        log.close()
    return target


def load_forecaster(directory: Path) -> Forecaster:
    """The forecaster saved in `directory` (its `meta.json` says which kind)."""
    meta = json.loads((directory / META_FILE).read_text())
    if meta.get("kind") == PointBaseline.kind:
        return PointBaseline.load(directory)
    return QuantileGBM.load(directory)


@dataclass
class LoadedModel:
    """A registered version ready to predict: `predict(features_df) -> (n, 3)` P10/P50/P90."""

    version: str
    model: Forecaster
    train_start: str | None = None
    train_end: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "baseline" if isinstance(self.model, PointBaseline) else "model"

    @property
    def feature_columns(self) -> list[str]:
        return self.model.feature_columns

    def predict(self, features: pd.DataFrame) -> np.ndarray:
        """Sorted quantiles per row; one thread (per-row latency matters more than throughput)."""
        if isinstance(self.model, PointBaseline):
            return self.model.predict(features)
        columns = self.model.feature_columns
        frame = features if list(features.columns) == columns else features[columns]
        return self.model.predict_array(frame.to_numpy(dtype="float64"), num_threads=1)


def load_version(settings: Settings, version: str) -> LoadedModel:
    """Download (once, cached under the data directory) and load one registered version."""
    import mlflow.artifacts

    c = client(settings)
    mv = c.get_model_version(MODEL_NAME, version)
    # keyed by run too: a registry recreated under the same data directory reuses version numbers
    cache = settings.path("mlflow", "cache", f"v{version}-{mv.run_id}")
    target = cache / "artifacts" / MODEL_DIR
    if not (target / "meta.json").exists():
        # A version's source is its logged model (`models:/m-...`), which MLflow resolves on the
        # process-wide tracking URI, not the one passed below: set it, or a process that never
        # logged a model (a fresh `rtml serve`) finds no model behind a cold cache.
        mlflow.set_tracking_uri(tracking_uri(settings))
        mlflow.set_registry_uri(tracking_uri(settings))
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{MODEL_NAME}/{version}",
            dst_path=str(cache),
            tracking_uri=tracking_uri(settings),
            registry_uri=tracking_uri(settings),
        )
    model = load_forecaster(_find_model_dir(cache))
    info = _version_info(c, str(mv.version), None)
    return LoadedModel(str(mv.version), model, info["train_start"], info["train_end"], info["metrics"])


def _find_model_dir(root: Path) -> Path:
    for meta in root.rglob("meta.json"):
        return meta.parent
    raise FileNotFoundError(f"no model files under {root}")


def load_champion(settings: Settings) -> LoadedModel:
    """The current champion, loaded for fast prediction; LookupError if there is none."""
    version = champion_version(settings)
    if version is None:
        raise LookupError(f"no '{CHAMPION}' version of {MODEL_NAME} yet")
    return load_version(settings, version)


def log_candidate(
    settings: Settings,
    model: Forecaster,
    sample: pd.DataFrame,
    run_id: str,
    tags: dict[str, str],
) -> str:
    """Log the model (pyfunc with its signature, LightGBM files inside) and register a new version."""
    import tempfile

    import lightgbm
    import mlflow
    from mlflow.models import infer_signature

    quiet_mlflow()
    mlflow.set_tracking_uri(tracking_uri(settings))
    mlflow.set_registry_uri(tracking_uri(settings))
    x = sample[model.feature_columns].astype("float64")
    signature = infer_signature(x, pd.DataFrame(model.predict(x), columns=list(OUTPUT_COLUMNS)))
    code = Path(__file__).with_name("pyfunc.py")
    tags = {KIND_TAG: "baseline" if isinstance(model, PointBaseline) else "model", **tags}
    requirements = [
        f"lightgbm=={lightgbm.__version__}",
        f"numpy=={np.__version__}",
        f"pandas=={pd.__version__}",
        f"mlflow=={mlflow.__version__}",
    ]
    c = client(settings)
    if not _has_model(c):
        c.create_registered_model(MODEL_NAME, description="P10/P50/P90 of fee_avg_sat 5 minutes ahead")
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # The signature is explicit; an input example would only slow logging down (NOTES.md).
        warnings.filterwarnings("ignore", message=".*An input example was not provided")
        model.save(Path(tmp) / MODEL_DIR)
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(code),
                artifacts={MODEL_DIR: str(Path(tmp) / MODEL_DIR)},
                signature=signature,
                pip_requirements=requirements,
            )
    mv = mlflow.register_model(info.model_uri, MODEL_NAME, tags=tags)
    return str(mv.version)


def model_counters(settings: Settings) -> dict[str, float]:
    """Trainings, promotions, rejections and rollbacks (from the event log), the champion's version
    and backtest wQL; for /metrics (the registry and event log are this part's stores)."""
    from rtml.monitoring.events import EventLog

    log = EventLog(settings)
    try:
        kinds = [e.kind for e in log.recent(limit=1_000_000, prefix="model.")]
    finally:
        log.close()
    out = {
        "trainings": float(kinds.count("model.gate")),
        "promotions": float(kinds.count("model.promoted")),
        "rejections": float(kinds.count("model.rejected")),
        "rollbacks": float(kinds.count("model.rollback")),
        "champion_version": 0.0,
        "champion_wql": float("nan"),
    }
    info = champion_info(settings)
    if info is not None:
        out["champion_version"] = float(info["version"])
        out["champion_wql"] = float(info["metrics"].get("wql", float("nan")))
    return out


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


def _utc(iso: str) -> datetime:
    moment = datetime.fromisoformat(iso)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def protected_versions(settings: Settings) -> list[dict[str, Any]]:
    """The champion and every version on its history (what rollback can return to), with fields
    as `list_versions`: retention keeps them, their artifacts and their training windows.
    Only the last `retention.champion_history` count, as `trim_candidates` cuts the history to
    them: so the offline store's trim, which runs first, protects the same windows whether or
    not an earlier (killed) run already cut it."""
    keep = set(champion_history(settings)[-max(1, settings.retention.champion_history) :])
    champion = champion_version(settings)
    if champion is not None:
        keep.add(champion)
    return [v for v in list_versions(settings) if v["version"] in keep]


def protected_windows(settings: Settings) -> list[tuple[datetime, datetime]]:
    """The training windows of `protected_versions`: the offline store keeps them whole."""
    return [
        (_utc(v["train_start"]), _utc(v["train_end"]))
        for v in protected_versions(settings)
        if v["train_start"] and v["train_end"]
    ]


def trim_candidates(settings: Settings, before: datetime) -> int:
    """Retention: delete versions that were never champion (or that rollback can no longer return
    to: the history keeps the last `retention.champion_history`) and were trained on data ending
    before `before`: their artifacts, their model-cache copy, the version and (softly) its run.

    Order per version: artifacts, then the registry row. A crash between them leaves a version
    without files, which the next run deletes (a version is only ever loaded while champion).
    """
    import shutil
    from urllib.parse import unquote

    from mlflow.exceptions import MlflowException

    c = client(settings)
    history = champion_history(settings)
    limit = max(1, settings.retention.champion_history)
    if len(history) > limit:  # rollback walks this tag: beyond it, no rollback returns
        c.set_registered_model_tag(MODEL_NAME, HISTORY_TAG, json.dumps(history[-limit:]))
    keep = {v["version"] for v in protected_versions(settings)}
    gone = 0
    for info in list_versions(settings):
        end = info["train_end"]
        if info["version"] in keep or not end or _utc(end) >= before:
            continue
        mv = c.get_model_version(MODEL_NAME, info["version"])
        uris = []
        # The logged model (the model files): MLflow 3 names it in the version's source.
        source = mv.source or ""
        model_id = mv.model_id or (source.removeprefix("models:/") if source.startswith("models:/m-") else None)
        if model_id:
            uris.append(c.get_logged_model(model_id).artifact_location)
        if mv.run_id:  # the run's own artifacts (backtest figures, dataset card)
            uris.append(c.get_run(mv.run_id).info.artifact_uri)
        own = (settings.root / "mlflow").resolve()
        for uri in uris:  # only folders of this data directory's artifact store, never a link
            path = Path(unquote(urlsplit(uri).path)) if uri and uri.startswith("file://") else None
            if path is not None and path.name == "artifacts":
                path = path.parent  # <run id>/ or models/<model id>/, which hold nothing else
            if path is not None and not path.is_symlink() and path.resolve().is_relative_to(own):
                shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(settings.root / "mlflow" / "cache" / f"v{mv.version}-{mv.run_id}", ignore_errors=True)
        c.delete_model_version(MODEL_NAME, str(mv.version))
        # MLflow only marks runs and logged models deleted; its rows (metrics, params, tags) would
        # grow the database by every training. Hard deletion is what `mlflow gc` does.
        store = c._tracking_client.store
        for hard_delete, key in ((getattr(store, "_hard_delete_logged_model", None), model_id),
                                 (getattr(store, "_hard_delete_run", None), mv.run_id)):  # fmt: skip
            if hard_delete is not None and key:
                try:
                    hard_delete(key)
                except MlflowException:  # gone already: a run of this job that was interrupted
                    pass
        gone += 1
    return gone


def registry_stats(settings: Settings) -> tuple[int, int, int | None]:
    """(bytes of artifacts and cache, registered versions, oldest training start in ms or None)."""
    versions = list_versions(settings)
    root = settings.root / "mlflow"
    files = [root / "mlflow.db", *(p for sub in ("artifacts", "cache") for p in (root / sub).rglob("*"))]
    size = sum(p.stat().st_size for p in files if p.is_file())
    starts = [_utc(v["train_start"]) for v in versions if v["train_start"]]
    return size, len(versions), int(min(starts).timestamp() * 1000) if starts else None
