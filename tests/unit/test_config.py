from __future__ import annotations

from pathlib import Path

import pytest

from rtml.config import get_settings


def test_file_then_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "rtml.toml"
    toml.write_text('profile = "services"\n[window]\nallowed_lateness_s = 30\n[serving]\nport = 9000\n')
    monkeypatch.setenv("RTML_CONFIG", str(toml))
    monkeypatch.setenv("RTML_SERVING__PORT", "9100")
    monkeypatch.delenv("RTML_PROFILE", raising=False)
    settings = get_settings()
    assert settings.profile == "services"
    assert settings.window.allowed_lateness_s == 30
    assert settings.serving.port == 9100
    assert settings.window.idle_timeout_s == 20


def test_two_data_dirs_get_two_namespaces(tmp_path: Path) -> None:
    a = get_settings(data_dir=tmp_path / "a")
    b = get_settings(data_dir=tmp_path / "b")
    assert a.namespace != b.namespace
    assert a.path("x.db").parent == (tmp_path / "a").resolve()


def test_namespace_can_be_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTML_NAMESPACE", "shared_pg_app1")
    assert get_settings(data_dir=tmp_path / "a").namespace == "shared_pg_app1"
