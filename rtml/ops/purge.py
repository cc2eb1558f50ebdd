"""`rtml down --purge`: find every piece of state this pipeline created, list it, delete it.

The pipeline keeps all its files under the data directory, every Redis key under
`<namespace>:` (Feast's online keys, which take no prefix, end with the namespace instead) and
every PostgreSQL table in the schema `<namespace>` (see rtml.config), so the plan is exact:
nothing of another application's is ever listed.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from rtml.config import Settings


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
    """What a purge would delete. `services`: also look in Redis and PostgreSQL."""
    data_dir = settings.data_dir.expanduser().resolve()
    plan = PurgePlan(data_dir=data_dir)
    if data_dir.exists():
        plan.files = sum(1 for p in data_dir.rglob("*") if p.is_file())
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
    shutil.rmtree(plan.data_dir, ignore_errors=True)
