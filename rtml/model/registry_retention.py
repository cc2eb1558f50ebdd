"""Retention of the MLflow registry: what `rtml.ops.retention` keeps and deletes of it.

Kept: the champion and every version on its history (what rollback can return to), with their
artifacts and training windows. Deleted, once trained on data older than the candidates'
window: every other version, with its artifacts, its model-cache copy, its run and its logged
model, and the rows MLflow itself never deletes (a deleted version stays as a `Deleted_Internal`
row with its tags, a run's output link stays in `inputs`). Without that the database grows by
every training for as long as the pipeline runs.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from rtml.config import Settings
from rtml.model.registry import (
    HISTORY_TAG,
    MODEL_NAME,
    champion_history,
    champion_version,
    client,
    list_versions,
    tracking_uri,
)

# SQLite keeps the pages of deleted rows as free pages; past this share of the file they are
# given back (VACUUM of a few MB, at most once an hour).
VACUUM_FREE_SHARE = 0.25


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
    before `before`; returns how many.

    Order per version: artifacts, run and logged model, then the version. A crash in between
    leaves a version without files or run, which the next run deletes (a version is only ever
    loaded while protected). The rows MLflow leaves behind are purged at the end, every time,
    so an interrupted purge is finished by the next one.
    """
    from mlflow.exceptions import MlflowException

    c = client(settings)
    history = champion_history(settings)
    limit = max(1, settings.retention.champion_history)
    if len(history) > limit:  # rollback walks this tag: beyond it, no rollback returns
        c.set_registered_model_tag(MODEL_NAME, HISTORY_TAG, json.dumps(history[-limit:]))
    keep = {v["version"] for v in protected_versions(settings)}
    store = c._tracking_client.store
    gone = 0
    for info in list_versions(settings):
        end = info["train_end"]
        if info["version"] in keep or not end or _utc(end) >= before:
            continue
        mv = c.get_model_version(MODEL_NAME, info["version"])
        # The logged model (the model files): MLflow 3 names it in the version's source.
        source = mv.source or ""
        model_id = mv.model_id or (source.removeprefix("models:/") if source.startswith("models:/m-") else None)
        uris = []
        try:  # deleted already by a run of this job that was interrupted: nothing left to find
            if model_id:
                uris.append(c.get_logged_model(model_id).artifact_location)
        except MlflowException:
            pass
        try:  # the run's own artifacts hold the backtest figures and the dataset card
            if mv.run_id:
                uris.append(c.get_run(mv.run_id).info.artifact_uri)
        except MlflowException:
            pass
        _remove_artifacts(settings, uris)
        shutil.rmtree(settings.root / "mlflow" / "cache" / f"v{mv.version}-{mv.run_id}", ignore_errors=True)
        # MLflow only marks runs and logged models deleted: hard deletion is what `mlflow gc` does.
        for hard_delete, key in ((getattr(store, "_hard_delete_logged_model", None), model_id),
                                 (getattr(store, "_hard_delete_run", None), mv.run_id)):  # fmt: skip
            if hard_delete is not None and key:
                try:
                    hard_delete(key)
                except MlflowException:
                    pass
        c.delete_model_version(MODEL_NAME, str(mv.version))
        _forget_artifact_repos((model_id, mv.run_id))
        gone += 1
    purge_deleted_rows(settings)
    return gone


def _forget_artifact_repos(keys: tuple[str | None, ...]) -> None:
    """MLflow caches, process-wide, an artifact repository (about 8 KB) per run and logged model
    it wrote to, up to 1,024, and never drops deleted ones: the scheduler, which trains and trims,
    would hold one per training for as long as 1,024 trainings take. A crash before this leaves
    nothing behind (the cache is in memory)."""
    from mlflow.tracking._tracking_service import utils

    cache = getattr(utils, "_artifact_repos_cache", None)
    if cache is None:  # an MLflow without the cache: nothing to forget
        return
    for key in filter(None, keys):
        cache.pop(key, None)


def _remove_artifacts(settings: Settings, uris: list[str]) -> None:
    """Only folders of this data directory's artifact store, never through a link."""
    own = (settings.root / "mlflow").resolve()
    for uri in uris:
        path = Path(unquote(urlsplit(uri).path)) if uri and uri.startswith("file://") else None
        if path is not None and path.name == "artifacts":
            path = path.parent  # <run id>/ or models/<model id>/, which hold nothing else
        if path is not None and not path.is_symlink() and path.resolve().is_relative_to(own):
            shutil.rmtree(path, ignore_errors=True)


def purge_deleted_rows(settings: Settings) -> int:
    """Delete the rows MLflow keeps of what retention deleted; returns how many went.

    - `model_versions` rows marked `Deleted_Internal`, and their tags, except the highest
      version: MLflow numbers a new version after the highest row, so keeping that one row means
      a version number is never given twice;
    - `inputs` links whose run or logged model is gone.
    Then, on SQLite, the freed pages go back to the file system when they are a large share.
    """
    from sqlalchemy import text

    store = client(settings)._tracking_client.store
    name = {"name": MODEL_NAME}
    dead = (
        "SELECT version FROM model_versions WHERE name = :name AND current_stage = 'Deleted_Internal' "
        "AND version < (SELECT max(version) FROM model_versions WHERE name = :name)"
    )
    statements: tuple[tuple[str, dict[str, str]], ...] = (
        (f"DELETE FROM model_version_tags WHERE name = :name AND version IN ({dead})", name),
        (f"DELETE FROM model_versions WHERE name = :name AND version IN ({dead})", name),
        (
            "DELETE FROM inputs WHERE (source_type LIKE 'RUN%' AND source_id NOT IN (SELECT run_uuid FROM runs))"
            " OR (destination_type LIKE 'RUN%' AND destination_id NOT IN (SELECT run_uuid FROM runs))"
            " OR (source_type LIKE 'MODEL%' AND source_id NOT IN (SELECT model_id FROM logged_models))"
            " OR (destination_type LIKE 'MODEL%' AND destination_id NOT IN (SELECT model_id FROM logged_models))",
            {},
        ),
    )
    with store.engine.begin() as conn:  # one transaction: all of it or none
        purged = sum(int(conn.execute(text(sql), params).rowcount or 0) for sql, params in statements)
    _vacuum(settings)
    return purged


def _vacuum(settings: Settings) -> None:
    """Give SQLite's free pages back once they are VACUUM_FREE_SHARE of the file: the database
    would otherwise stay at the size of its fullest hour. Busy (a reader mid-transaction): next hour."""
    import sqlite3

    uri = tracking_uri(settings)
    if not uri.startswith("sqlite:///"):
        return  # PostgreSQL's autovacuum reuses the space of deleted rows
    conn = sqlite3.connect(uri.removeprefix("sqlite:///"), timeout=5, isolation_level=None)
    try:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        if conn.execute("PRAGMA freelist_count").fetchone()[0] > VACUUM_FREE_SHARE * pages:
            conn.execute("VACUUM")
    except sqlite3.OperationalError:
        pass
    finally:
        conn.close()


def registry_stats(settings: Settings) -> tuple[int, int, int | None]:
    """(bytes of the database, artifacts and cache; registered versions; oldest training start in ms or None)."""
    versions = list_versions(settings)
    root = settings.root / "mlflow"
    files = [root / "mlflow.db", *(p for sub in ("artifacts", "cache") for p in (root / sub).rglob("*"))]
    size = sum(p.stat().st_size for p in files if p.is_file())
    starts = [_utc(v["train_start"]) for v in versions if v["train_start"]]
    return size, len(versions), int(min(starts).timestamp() * 1000) if starts else None
