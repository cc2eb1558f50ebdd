"""Conformance suites (issue 19): one suite per interface, written once, run against every backend class.

As River's `check_estimator` runs one suite on every estimator and Quix Streams parametrises its
state tests over its supported stores, each module here lists its interface's backend classes in
a module-level `BACKENDS` (class -> the profile whose factory picks it, and how to open it on
that profile's settings), and every test taking `case` runs once per class. A new backend (say,
Kafka as a stream) is added to its interface by adding its class there: it then has to pass the
whole suite, and each module's `test_every_backend_class_is_in_the_suite` fails until it is.
Services backends run on the real Redis and PostgreSQL, each test in a namespace of its own
(tests/conftest.py's `services_settings`, which purges it afterwards).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conformance_kit import Backend, Case


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test taking `case` runs once per class of its module's BACKENDS."""
    if "case" in metafunc.fixturenames:
        classes = list(metafunc.module.BACKENDS)
        metafunc.parametrize("case", classes, ids=[c.__name__ for c in classes], indirect=True)


@pytest.fixture
def case(request: pytest.FixtureRequest) -> Iterator[Case[Any]]:
    backend: Backend[Any] = request.module.BACKENDS[request.param]
    name = "settings" if backend.profile == "embedded" else "services_settings"
    opened = Case(request.param, backend, request.getfixturevalue(name))
    yield opened
    opened.close_all()
