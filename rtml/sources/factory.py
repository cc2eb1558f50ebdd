"""Which class runs a source: the name -> class map (`rtml ingest --source NAME`), like Feast's
online-store type -> class map, and the one factory that picks from it.

Importing this module imports every source (httpx, websockets): only `rtml ingest` does.
"""

from __future__ import annotations

from rtml.config import Settings
from rtml.sources.base import Source, SourceOptions
from rtml.sources.blockchain_rest import RestSource
from rtml.sources.blockchain_ws import WsSource
from rtml.sources.replay import FileReplay, SyntheticTraffic

SOURCE_TYPES: dict[str, type[Source]] = {
    cls.name: cls for cls in (WsSource, RestSource, FileReplay, SyntheticTraffic)
}


def open_source(settings: Settings, name: str, options: SourceOptions) -> Source:
    """The source called `name` (`ws`, `rest`, `replay`, `synthetic`) with the options it uses."""
    if name not in SOURCE_TYPES:
        raise ValueError(f"unknown source {name!r}; expected one of {', '.join(SOURCE_TYPES)}")
    return SOURCE_TYPES[name](settings, options)
