"""The conformance suites: one contract per part's interface, written once and run against every
backend class (the services ones on the real PostgreSQL and Redis), as Feast runs its universal
suite on every online store."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from rtml.config import Settings


@pytest.fixture
def settings_of(request: pytest.FixtureRequest) -> Callable[[str], Settings]:
    """Settings of a profile in a fresh data directory (and, for services, a namespace of its own)."""

    def settings(profile: str) -> Settings:
        return request.getfixturevalue("settings" if profile == "embedded" else "services_settings")  # type: ignore[no-any-return]

    return settings
