"""MLflow tracking and registry: where candidates are logged, and where `champion` points.

The tracking store (SQLite embedded, PostgreSQL in services) and its client are
`rtml.model.mlflow_store`'s.

The registered model is `fee_forecaster`; the alias `champion` marks the serving version.
Every version carries its training window (`train_start`, `train_end`, ISO UTC) and gate
decision as tags; the registered model's tag `champion_history` (JSON list of versions, oldest
first) is what `rollback` walks back along. Serving loads the LightGBM files of the champion
directly (`load_champion`), which is far faster per row than pyfunc.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from rtml.aggregate.clock import current_boundary
from rtml.config import Settings
from rtml.model.baselines import PointBaseline
from rtml.model.gbm import META_FILE, QuantileGBM
from rtml.model.mlflow_store import (
    artifact_root,
    client,
    quiet_mlflow,
    registry_absent,
    tracking_uri,
)
from rtml.model.mlflow_store import registry_exists as registry_exists  # its callers' import
from rtml.model.mlflow_store import registry_file as registry_file  # serving's import

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
# The scheduler boundary a scheduled training ran at (see `log_candidate`).
BOUNDARY_TAG = "boundary_ms"
Forecaster = QuantileGBM | PointBaseline


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


def champion_version(settings: Settings) -> str | None:
    """The version the `champion` alias points at, or None; cheap enough to poll.

    Lenient: a registry error also reads as None, which suits pollers (serving keeps its model).
    A decision that must not mistake an error for "no champion" uses `champion_version_strict`.
    """
    from mlflow.exceptions import MlflowException

    if registry_absent(settings):
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

    if registry_absent(settings):
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
    if registry_absent(settings):
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
    if registry_absent(settings):
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
    """Log the model (pyfunc with its signature, LightGBM files inside) and register a new version.

    Within a scheduled job, at most one version of each kind per boundary: a job retried after
    a PostgreSQL outage gets the version its first try registered (that try's MLflow run, when
    the outage cut it before the registration, stays behind without a version).
    """
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
    boundary = current_boundary.get()
    if boundary is not None:
        # A scheduled training registers one version per boundary: a retry after the registry
        # went away mid-way (the scheduler waits for it) finds the version of the first try.
        tags[BOUNDARY_TAG] = str(boundary)
        for mv in c.search_model_versions(f"name='{MODEL_NAME}'"):
            if mv.tags.get(BOUNDARY_TAG) == str(boundary) and mv.tags.get(KIND_TAG) == tags[KIND_TAG]:
                return str(mv.version)
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
