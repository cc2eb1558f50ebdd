"""The sources' name -> class map: every `rtml ingest --source` name has its class, and the factory
refuses what no class can run before anything is opened."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtml.config import Settings
from rtml.sources.base import SourceOptions
from rtml.sources.commands import SourceKind
from rtml.sources.factory import SOURCE_TYPES, open_source
from rtml.sources.replay import FileReplay, SyntheticTraffic


def test_every_cli_source_has_its_class_named_as_its_events_are_stamped() -> None:
    assert set(SOURCE_TYPES) == {kind.value for kind in SourceKind}
    assert all(cls.name == name for name, cls in SOURCE_TYPES.items())


def test_the_factory_picks_the_class_and_refuses_what_none_can_run(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    replay = open_source(settings, "replay", SourceOptions(file=tmp_path / "x.jsonl", speed=None))
    assert isinstance(replay, FileReplay) and replay.file == tmp_path / "x.jsonl"
    assert isinstance(open_source(settings, "synthetic", SourceOptions()), SyntheticTraffic)
    with pytest.raises(ValueError, match="needs a file"):
        open_source(settings, "replay", SourceOptions())
    with pytest.raises(ValueError, match="unknown source 'kafka'"):
        open_source(settings, "kafka", SourceOptions())
