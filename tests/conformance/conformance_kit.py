"""What the conformance suites share (see conftest.py): how a backend class is opened, and the
checks every interface's `close()` and backend list go through."""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

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


def open_files() -> dict[int, str]:
    """This process's open file descriptors and what they point at (files, sockets)."""
    found = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            found[int(fd)] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the descriptor listdir itself used, closed by now
            pass
    return found


def leaked(before: dict[int, str]) -> dict[int, str]:
    """Descriptors open now that were not open (to the same thing) at `before`."""
    return {fd: target for fd, target in open_files().items() if before.get(fd) != target}


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
