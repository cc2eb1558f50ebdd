"""schemathesis against the service's own OpenAPI spec, over real HTTP: no request it can
generate, valid or not, gets a server error, and every answer matches the documented schema.

The service runs on the real feature store and registry (the serving bed of tests/conftest.py, as
in test_serving.py). Admin calls carry the token, so promote and rollback run for real;
the champion is put back afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from conftest import SERVING_TOKEN as TOKEN
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from prometheus_client.parser import text_string_to_metric_families
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from rtml.config import Settings
from rtml.pipeline import serving_app
from rtml.serving.server import BackgroundServer


@pytest.fixture(scope="module")
def server_url(bed: tuple[Settings, list[str]]) -> Iterator[str]:
    server = BackgroundServer(serving_app(bed[0])).start()
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
    # The schema states what the code enforces (feature columns, bounds, time range), so
    # generated requests get past validation and reach the model: batch forecasts were given.
    forecasts = {
        sample.labels["kind"]: sample.value
        for family in text_string_to_metric_families(httpx.get(f"{server_url}/metrics", timeout=30).text)
        for sample in family.samples
        if sample.name == "rtml_serving_forecasts_total"
    }
    assert forecasts.get("batch", 0) > 0, forecasts


def _fuzz(operation: schemathesis.APIOperation, checks: list) -> None:
    @given(case=operation.as_strategy())
    @hypothesis_settings(
        max_examples=12, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck)
    )
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"}, checks=checks)

    check()
