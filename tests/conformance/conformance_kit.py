"""Conformance suites (issue 19): one suite per interface, written once, run against every backend class.

As River's `check_estimator` runs one suite on every estimator and Quix Streams parametrises its
state tests over its supported stores, each module here lists its interface's backend classes in
a module-level `BACKENDS` (class -> the profile whose factory picks it, and how to open it on
that profile's settings); every test taking the module's `case` fixture (`case =
backend_cases(BACKENDS)`) runs once per class. A new backend (say, Kafka as a stream) is added
to its interface by adding its class there: it then has to pass the whole suite, and each
module's `test_every_backend_class_is_in_the_suite` fails until it is. (No conftest.py here:
one would shadow tests/conftest.py for the modules that import from it.)
Services backends run on the real Redis and PostgreSQL, each test in a namespace of its own
(tests/conftest.py's `services_settings`, which purges it afterwards).
"""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import urlparse

import pytest

from rtml.config import Settings

T = TypeVar("T")


@dataclass(frozen=True)
class Backend(Generic[T]):
    """How the suite gets a backend: the profile whose factory picks the class, and its opener."""

    profile: str
    open: Callable[[Settings], T]


class Case(Generic[T]):
    """One backend class under test: its settings, `open()` (again and again: a reopen is a
    restart), and whatever a test leaves open is closed at teardown."""

    def __init__(self, cls: type[T], backend: Backend[T], settings: Settings) -> None:
        self.cls, self.backend, self.settings = cls, backend, settings
        self._opened: list[Any] = []

    def open(self) -> T:
        opened = self.backend.open(self.settings)
        assert type(opened) is self.cls, f"the opener for {self.cls.__name__} made a {type(opened).__name__}"
        self._opened.append(opened)
        return opened

    def close_all(self) -> None:
        for opened in self._opened:
            opened.close()


def backend_cases(backends: dict[type[T], Backend[T]]) -> Any:
    """The `case` fixture of a suite: each test taking it runs once per class of `backends`
    (the module's BACKENDS), on the settings of the class's profile."""

    @pytest.fixture(params=list(backends), ids=[cls.__name__ for cls in backends])
    def case(request: pytest.FixtureRequest) -> Iterator[Case[T]]:
        backend = backends[request.param]
        name = "settings" if backend.profile == "embedded" else "services_settings"
        opened = Case(request.param, backend, request.getfixturevalue(name))
        yield opened
        opened.close_all()

    return case


def held(settings: Settings) -> dict[int, str]:
    """The descriptors this process holds on what a backend of `settings` opens: files under its
    data directory, sockets to its Redis and PostgreSQL. (Only those: a thread another test left
    in the same worker may open files or sockets of its own at any moment.)"""
    import psutil

    root = os.path.realpath(settings.root)
    found = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the descriptor listdir itself used, closed by now
            continue
        if target.startswith(root + os.sep):
            found[int(fd)] = target
    ports = {urlparse(settings.redis_url).port or 6379, urlparse(settings.postgres_dsn).port or 5432}
    for conn in psutil.Process().net_connections(kind="inet"):
        if conn.raddr and conn.raddr.port in ports and conn.fd >= 0:
            found[conn.fd] = f"socket to {conn.raddr.ip}:{conn.raddr.port}"
    return found


def leaked(settings: Settings, before: dict[int, str]) -> dict[int, str]:
    """What `held` finds now that was not held (on the same thing) at `before`."""
    return {fd: target for fd, target in held(settings).items() if before.get(fd) != target}


def implementations(base: type, where: str) -> set[type]:
    """Every concrete subclass of `base` defined in the module or package `where` (its modules
    imported first, so a class in a new module is found too)."""
    root = importlib.import_module(where)
    for info in pkgutil.walk_packages(getattr(root, "__path__", []), f"{where}."):
        importlib.import_module(info.name)
    found, todo = set(), [base]
    while todo:
        for sub in todo.pop().__subclasses__():
            todo.append(sub)
            if sub.__module__.startswith(where) and not inspect.isabstract(sub):
                found.add(sub)
    return found
