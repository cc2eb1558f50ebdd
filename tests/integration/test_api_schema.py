"""schemathesis against the service's own OpenAPI spec, over real HTTP: no request it can
generate, valid or not, gets a server error, and every answer matches the documented schema.

The service runs on the real feature store and registry (the session's serving bed, shared
with test_serving.py). Admin calls carry the token, so promote and rollback run for real;
the champion is put back afterwards.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from rtml.config import Settings, get_settings
from rtml.model import registry
from rtml.serving.app import BackgroundServer, create_app

TOKEN = "test-admin-token"


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, list[str]]]:
    root = tmp_path_factory.getbasetemp() / "serving-bed"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RTML_DATA_DIR", str(root / "rtml-data"))
        mp.setenv("RTML_PROFILE", "embedded")
        mp.setenv("RTML_CONFIG", str(root / "absent.toml"))
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        mp.setenv("RTML_SERVING__ADMIN_TOKEN", TOKEN)
        # The bed's newest minute is as old as the bed, which other modules may have seeded long
        # before: freshness is tested on its own (test_stale_features_get_a_clear_503...).
        mp.setenv("RTML_SERVING__MAX_FEATURE_AGE_S", str(7 * 86400))
        settings = get_settings()
        versions = seed_in_another_process()
        yield settings, versions
        if registry.champion_version(settings) != versions[0]:
            registry.promote(settings, versions[0], reason="test cleanup")


@pytest.fixture(scope="module")
def server_url(bed: tuple[Settings, list[str]]) -> Iterator[str]:
    server = BackgroundServer(create_app(bed[0])).start()
    yield server.url
    server.stop()


SERVING_OPERATIONS = {
    ("GET", "/forecast"),
    ("POST", "/forecast"),
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/model"),
    ("GET", "/metrics"),
    ("POST", "/admin/promote"),
    ("POST", "/admin/rollback"),
}


def test_no_server_error_and_answers_match_the_spec(server_url: str) -> None:
    """Every operation, a dozen generated cases each (valid and invalid). Routers other parts
    include (the dashboard) are held to "no server error"; serving's own operations also to
    their documented status codes, content types and response schemas."""
    schema = schemathesis.openapi.from_url(f"{server_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {(op.method.upper(), op.path) for op in operations} >= SERVING_OPERATIONS
    conformance = [status_code_conformance, content_type_conformance, response_schema_conformance]
    for operation in operations:
        ours = (operation.method.upper(), operation.path) in SERVING_OPERATIONS
        checks = [not_a_server_error, *(conformance if ours else [])]
        _fuzz(operation, checks)


def _fuzz(operation: schemathesis.APIOperation, checks: list) -> None:
    @given(case=operation.as_strategy())
    @hypothesis_settings(
        max_examples=12, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck)
    )
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"}, checks=checks)

    check()


def seed_in_another_process() -> list[str]:
    """The serving bed, written by another process as a trainer would: the service must find the
    models through the registry alone (no MLflow state left in this process)."""
    out = subprocess.run(
        [sys.executable, "-m", "rtml.serving.seed"], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return list(json.loads(out.stdout.strip().splitlines()[-1]))
