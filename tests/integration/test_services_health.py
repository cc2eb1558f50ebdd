"""Durability is checked, not assumed: `rtml up --profile services` refuses a Redis that does not
persist the stream (or whose settings it cannot read), accepts it with
`stream.allow_volatile_redis`, and `rtml status` then shows each service's health and warns.
Every Redis here is a private `redis-server` the test starts (tests/faults.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from faults import free_port

from rtml.config import get_settings
from rtml.ops.services import check_postgres, check_redis, stream_refusal
from rtml.ops.supervisor import supervisor_running

pytestmark = pytest.mark.services


def rtml(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rtml", *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


@pytest.fixture
def services_env(data_dir: Path, postgres_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTML_PROFILE", "services")
    monkeypatch.setenv("RTML_POSTGRES_DSN", postgres_dsn)
    monkeypatch.delenv("RTML_STREAM__ALLOW_VOLATILE_REDIS", raising=False)


def test_up_refuses_a_redis_without_aof_and_accepts_it_when_allowed(
    services_env: None, private_redis: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    volatile = private_redis(appendonly=False)
    monkeypatch.setenv("RTML_REDIS_URL", volatile.url)
    wire = tmp_path / "empty.jsonl"
    wire.write_text("")
    up = ["up", "--profile", "services", "--source", "replay", "--file", str(wire), "--port", str(free_port())]
    refused = rtml(*up)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    message = " ".join(refused.stderr.split())
    assert "does not persist the stream" in message and "persistence: none" in message
    for fix in ("appendonly yes", "appendfsync everysec", "always", "stream.allow_volatile_redis"):
        assert fix in message
    assert volatile.client().keys("*") == []  # nothing was started, nothing written
    assert supervisor_running(get_settings()) is None

    allowed = {"RTML_STREAM__ALLOW_VOLATILE_REDIS": "true"}
    try:
        out = rtml(*up, env=allowed)
        assert out.returncode == 0, out.stdout + out.stderr
        status = json.loads(rtml("status", "--json", env=allowed).stdout)
        services = {s["name"]: s for s in status["services"]}
        assert services["redis"] == {**services["redis"], "url": volatile.url, "reachable": True,
                                     "persistence": "none", "durable": False, "error": None}  # fmt: skip
        assert services["redis"]["latency_ms"] > 0
        assert services["postgres"]["reachable"] and services["postgres"]["latency_ms"] > 0
        assert services["postgres"]["persistence"].startswith("fsync ")
        assert any("volatile Redis (allowed by stream.allow_volatile_redis)" in w for w in status["warnings"])
        table = " ".join(rtml("status", env=allowed).stdout.split())
        assert "warning: the stream is on a volatile Redis" in table and "services" in table
    finally:
        down = rtml("down", "--purge", "--yes", env=allowed)
        assert down.returncode == 0, down.stdout + down.stderr


def test_health_reads_aof_and_says_when_config_is_denied(
    services_env: None, private_redis: Callable[..., Any], postgres_dsn: str
) -> None:
    settings = get_settings()
    durable = check_redis(private_redis(appendonly=True).url)
    assert (durable.reachable, durable.persistence, durable.durable) == (True, "aof everysec", True)
    assert stream_refusal(settings, durable) is None

    hidden = check_redis(private_redis(appendonly=True, extra=("--rename-command", "CONFIG", "")).url)
    assert hidden.reachable and hidden.durable is None
    assert "CONFIG GET refused" in (hidden.persistence or "") and "aof_enabled:1" in (hidden.persistence or "")
    why = stream_refusal(settings, hidden)
    assert why is not None and "cannot tell whether" in why and "allow_volatile_redis" in why
    assert stream_refusal(get_settings(stream={"allow_volatile_redis": True}), hidden) is None

    gone = private_redis(appendonly=True)
    gone.stop()
    down = check_redis(gone.url)
    assert not down.reachable and down.error and "not reachable" in (stream_refusal(settings, down) or "")

    secret = check_postgres(postgres_dsn.replace("postgres@", "postgres:hunter2@").replace("/test", "/absent_db"))
    assert not secret.reachable and "hunter2" not in json.dumps(secret.as_dict())
