"""`rtml down --purge`: find every piece of state this pipeline created, list it, delete it.

The pipeline keeps all its files under the data directory, every Redis key under
`<namespace>:` (Feast's online keys, which take no prefix, end with the namespace instead) and
every PostgreSQL table in the schema `<namespace>` (see rtml.config), so the plan is exact:
nothing of another application's is ever listed.

What is rtml's is decided before anything is deleted (`refusal`): the directory must carry the
marker rtml writes when it creates a data directory (rtml.config.MARKER), must not be a
symlink, `/`, the home directory or the current directory or one of its ancestors, and in the
services profile the configured Redis and PostgreSQL must be the ones the marker recorded.
The deletion order (Redis, PostgreSQL, then the directory with its marker last) means a crash
part-way leaves the marker behind, so a second `rtml down --purge` finishes the job.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from rtml.config import MARKER, Settings, read_marker, without_secrets


class PurgeRefused(Exception):
    """The data directory is not provably rtml's: nothing was deleted."""


def data_dir_path(settings: Settings) -> Path:
    """The data directory as configured, absolute but with no symlink resolved."""
    return Path(os.path.abspath(settings.data_dir.expanduser()))


def refusal(settings: Settings, services: bool) -> str | None:
    """Why purging this data directory would be unsafe, or None when it is rtml's own."""
    path = data_dir_path(settings)
    if str(settings.data_dir) in ("", "."):
        return f"the data directory is empty or '.' (RTML_DATA_DIR={os.environ.get('RTML_DATA_DIR')!r}): it resolves to the current directory {path}"
    if path.is_symlink():
        return f"{path} is a symlink (to {os.readlink(path)}); purge never follows a symlink"
    real = path.resolve()
    if real == Path(real.anchor):
        return f"{real} is the file system root"
    if real == Path.home().resolve():
        return f"{real} is the home directory"
    cwd = Path.cwd().resolve()
    if cwd == real or cwd.is_relative_to(real):
        return f"{real} is the current directory or one of its ancestors ({cwd})"
    if not path.exists():
        return None
    if not path.is_dir():
        return f"{path} is not a directory"
    marker = read_marker(path)
    if marker is None:
        return (
            f"{path} has no rtml marker ({MARKER}): rtml did not create it, so purge deletes nothing in it"
        )
    if services and marker.get("services"):
        recorded = marker["services"]
        here = {"redis": without_secrets(settings.redis_url), "postgres": without_secrets(settings.postgres_dsn)}
        for name, where in here.items():
            if isinstance(recorded, dict) and recorded.get(name) not in (None, where):
                return (
                    f"the data directory's {name} is {recorded.get(name)} (recorded in {path / MARKER}), "
                    f"but the settings point at {where}: purge would delete another pipeline's data"
                )
    return None


@dataclass
class PurgePlan:
    data_dir: Path
    files: int = 0
    redis_keys: list[bytes] = field(default_factory=list)
    pg_tables: list[str] = field(default_factory=list)
    pg_schema: str | None = None

    @property
    def empty(self) -> bool:
        return not (self.files or self.data_dir.exists() or self.redis_keys or self.pg_schema)

    def describe(self) -> list[str]:
        lines = []
        if self.data_dir.exists():
            lines.append(f"directory {self.data_dir} ({self.files} files)")
        if self.redis_keys:
            lines.append(f"{len(self.redis_keys)} Redis keys (the namespace's and the feature store's)")
        if self.pg_schema:
            lines.append(f"PostgreSQL schema {self.pg_schema} with {len(self.pg_tables)} tables")
        return lines


def _redis_keys(settings: Settings) -> list[bytes]:
    import redis

    from rtml.features.feast_repo import online_redis_keys

    client = redis.Redis.from_url(settings.redis_url)
    own = client.scan_iter(match=f"{settings.namespace}:*".encode(), count=1000)
    return sorted({*own, *online_redis_keys(settings)})


def _pg_tables(settings: Settings) -> tuple[str | None, list[str]]:
    import psycopg

    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        found = conn.execute(
            "SELECT 1 FROM information_schema.schemata WHERE schema_name = %s", (settings.namespace,)
        ).fetchone()
        if not found:
            return None, []
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s ORDER BY 1",
            (settings.namespace,),
        ).fetchall()
    return settings.namespace, [r[0] for r in rows]


def plan_purge(settings: Settings, services: bool) -> PurgePlan:
    """What a purge would delete. `services`: also look in Redis and PostgreSQL.
    Raises PurgeRefused (having touched nothing) when the directory is not provably rtml's."""
    why = refusal(settings, services)
    if why is not None:
        raise PurgeRefused(why)
    data_dir = data_dir_path(settings)
    plan = PurgePlan(data_dir=data_dir)
    if data_dir.exists():
        plan.files = sum(1 for p in data_dir.rglob("*") if p.is_file() and not p.is_symlink())
    if services:
        plan.redis_keys = _redis_keys(settings)
        plan.pg_schema, plan.pg_tables = _pg_tables(settings)
    return plan


def execute_purge(settings: Settings, plan: PurgePlan) -> None:
    if plan.redis_keys:
        import redis

        client = redis.Redis.from_url(settings.redis_url)
        for start in range(0, len(plan.redis_keys), 1000):
            client.delete(*plan.redis_keys[start : start + 1000])
        # Keys written after the plan was made (none once everything is stopped, but be exact).
        leftover = _redis_keys(settings)
        if leftover:
            client.delete(*leftover)
    if plan.pg_schema:
        import psycopg

        with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{plan.pg_schema}" CASCADE')
    _remove_tree(plan.data_dir)


def _remove_tree(path: Path) -> None:
    """Delete the data directory without following any symlink inside it (rmtree unlinks them,
    and on Linux opens every level with O_NOFOLLOW); the marker goes last."""
    if not path.exists() or path.is_symlink():
        return
    marker = path / MARKER
    for child in path.iterdir():
        if child == marker:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    marker.unlink(missing_ok=True)
    path.rmdir()
