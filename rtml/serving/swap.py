"""Hot model swap: follow the registry's `champion` alias without ever blocking a request.

A background thread asks the registry every `poll_s` which version is champion; when it
changed, the new model is loaded beside the old one and published by one reference
assignment. A request reads `watcher.current` once and uses that object to the end, so
in-flight requests finish on the model they started with, and every response can name it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


class ServedModel(Protocol):
    """A loaded forecaster: `predict` returns an (n, 3) array of P10/P50/P90."""

    @property
    def version(self) -> str: ...

    def predict(self, features: pd.DataFrame) -> np.ndarray: ...


class ModelSource(Protocol):
    """The model registry as serving sees it."""

    def champion_version(self) -> str | None:
        """The version the `champion` alias names now (cheap: polled every second)."""
        ...

    def load_champion(self) -> ServedModel: ...

    def info(self, model: ServedModel) -> dict[str, Any]:
        """What GET /model shows: training_start, training_end, metrics, anything else."""
        ...

    def promote(self, version: str) -> str:
        """Make `version` champion and return it; LookupError if it does not exist."""
        ...

    def rollback(self) -> str:
        """Give the alias back to the previous champion and return it; ValueError if there is none."""
        ...


@dataclass(frozen=True)
class Loaded:
    """A model with its metadata, published together so they never disagree."""

    model: ServedModel
    info: dict[str, Any]
    loaded_at: float = field(default_factory=time.time)

    @property
    def version(self) -> str:
        return self.model.version


class ModelWatcher:
    """Keeps `current` on the registry's champion; swaps are a single reference assignment."""

    def __init__(
        self,
        source: ModelSource,
        poll_s: float = 1.0,
        on_swap: Callable[[Loaded | None, Loaded], None] | None = None,
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        self.source = source
        self.poll_s = poll_s
        self.current: Loaded | None = None
        self.last_error: str | None = None
        self._on_swap = on_swap
        self._on_error = on_error
        self._lock = threading.Lock()  # one load at a time; requests never take it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> Loaded | None:
        """Load the champion if it is not the model being served; returns what is served now."""
        with self._lock:
            try:
                version = self.source.champion_version()
                current = self.current
                if version is not None and (current is None or current.version != version):
                    model = self.source.load_champion()
                    loaded = Loaded(model, self.source.info(model))
                    self.current = loaded
                    log.info("serving model %s (was %s)", loaded.version, current and current.version)
                    if self._on_swap is not None:
                        self._on_swap(current, loaded)
                self.last_error = None
            except Exception as exc:  # a registry hiccup keeps the current model in service
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("champion poll failed, still serving %s: %s", self.current and self.current.version, exc)
                if self._on_error is not None:
                    self._on_error(exc)
            return self.current

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.refresh()
