"""What every source is: one place transactions come from, fed through an `Ingestor` until it
ends, `duration_s` passes or `stop` is set (`rtml.sources.factory` picks the class by name).

A source only hands over raw input; the ingestor parses, dedups, appends and counts it. So a
crash of a source leaves what the ingestor left (nothing lost: see `rtml.sources.ingest`), and a
source holds nothing of its own across runs.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from rtml.config import Settings

if TYPE_CHECKING:
    from rtml.sources.ingest import Ingestor


@dataclass(frozen=True)
class SourceOptions:
    """The `rtml ingest` options a source may use: `file` (replay), `speed` (replay and
    synthetic; None = at once), `duration_s` (every source), the URLs (live sources)."""

    file: Path | None = None
    speed: float | None = 1.0
    duration_s: float | None = None
    ws_url: str | None = None
    rest_url: str | None = None


class Source(ABC):
    """One source of transactions; `name` is the `source` stamped on its events and dead letters."""

    name: ClassVar[str]

    def __init__(self, settings: Settings, options: SourceOptions) -> None:
        self.settings = settings
        self.options = options

    @abstractmethod
    def run(self, ingestor: Ingestor, stop: threading.Event) -> str:
        """Feed `ingestor` until the input ends, `duration_s` passes or `stop` is set; returns a
        note on what the run went through (a live connection's reconnects), else ""."""

    def close(self) -> None:  # noqa: B027 - a source that holds nothing between runs has nothing to close
        """Release what the source holds."""
