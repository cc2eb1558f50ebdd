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


def test_a_data_directory_remembers_its_profile_and_namespace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from rtml.config import MARKER

    monkeypatch.delenv("RTML_PROFILE", raising=False)
    monkeypatch.delenv("RTML_NAMESPACE", raising=False)
    made = get_settings(data_dir=tmp_path / "d", profile="services", redis_url="redis://:pw@r.example:6380/2")
    assert made.root.is_dir()
    marker = json.loads((made.root / MARKER).read_text())
    assert marker["profile"] == "services" and marker["namespace"] == made.namespace
    assert marker["services"]["redis"] == "redis://r.example:6380/2"  # where, never the password
    assert "pw" not in (made.root / MARKER).read_text()
    later = get_settings(data_dir=tmp_path / "d")  # no profile given: the marker's
    assert (later.profile, later.namespace) == ("services", made.namespace)


@pytest.mark.parametrize(("key", "value"), [("profile", "embedded"), ("namespace", "other_ns")])
def test_a_conflicting_profile_or_namespace_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str, value: str
) -> None:
    from pydantic import ValidationError

    monkeypatch.delenv("RTML_PROFILE", raising=False)
    assert get_settings(data_dir=tmp_path / "d", profile="services").root.is_dir()
    with pytest.raises(ValidationError, match=f"{key} '{value}' conflicts with the data directory"):
        get_settings(data_dir=tmp_path / "d", **{key: value})


def test_the_cli_refuses_a_conflicting_profile_with_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import sys

    monkeypatch.delenv("RTML_PROFILE", raising=False)
    get_settings(data_dir=tmp_path / "d", profile="services").root  # noqa: B018 - creates the directory
    env = {**__import__("os").environ, "RTML_DATA_DIR": str(tmp_path / "d")}
    out = subprocess.run([sys.executable, "-m", "rtml", "--profile", "embedded", "status"], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 2
    assert "profile 'embedded' conflicts with the data directory" in out.stderr and "Traceback" not in out.stderr


def test_an_existing_directory_with_other_files_gets_no_marker(tmp_path: Path) -> None:
    from rtml.config import MARKER

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    assert not (get_settings(data_dir=tmp_path / "mine").root / MARKER).exists()
    (tmp_path / "empty").mkdir()
    assert (get_settings(data_dir=tmp_path / "empty").root / MARKER).exists()  # mkdtemp's case


@pytest.mark.parametrize(
    "namespace", ["a*", "public", "pg_toast", "pg_anything", "information_schema", "Rtml", "1abc", "a-b", "x" * 42, "a b"]
)
def test_an_invalid_namespace_is_refused_with_the_rule(tmp_path: Path, namespace: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"must match \^\[a-z\]\[a-z0-9_\]\{0,40\}\$"):
        get_settings(data_dir=tmp_path / "a", namespace=namespace)


@pytest.mark.parametrize("namespace", ["a", "rtml_0123456789", "shared_pg_app1", "a" + "b" * 40])
def test_valid_namespaces_pass(tmp_path: Path, namespace: str) -> None:
    assert get_settings(data_dir=tmp_path / "a", namespace=namespace).namespace == namespace


def test_rtml_config_masks_secrets_unless_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from rtml.cli import app

    monkeypatch.setenv("RTML_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("RTML_SERVING__ADMIN_TOKEN", "tok-s3cret")
    monkeypatch.setenv("RTML_POSTGRES_DSN", "postgresql://app:pg-s3cret@db.example:5432/rtml?sslmode=require")
    monkeypatch.setenv("RTML_REDIS_URL", "redis://:redis-s3cret@r.example:6379/0")
    masked = CliRunner().invoke(app, ["config"]).output
    assert "s3cret" not in masked
    assert "postgresql://app:***@db.example:5432/rtml?sslmode=require" in masked and "redis://:***@r.example" in masked
    assert 'admin_token = "***"' in masked
    shown = CliRunner().invoke(app, ["config", "--show-secrets"]).output
    assert "tok-s3cret" in shown and "pg-s3cret" in shown and "redis-s3cret" in shown


@pytest.mark.parametrize(("query", "mode"), [("", "prefer"), ("?sslmode=require", "require"), ("?sslmode=disable", "disable")])
def test_the_feature_store_takes_postgres_tls_from_the_dsn(tmp_path: Path, query: str, mode: str) -> None:
    from rtml.features.feast_repo import store_yaml

    settings = get_settings(
        data_dir=tmp_path / "d", profile="services", postgres_dsn=f"postgresql://u:p@h:5432/db{query}"
    )
    text = store_yaml(settings)
    assert f"  sslmode: {mode}\n" in text
    registry = next(line for line in text.splitlines() if "postgresql+psycopg://" in line)
    assert (f"sslmode={mode}" in registry) == bool(query)
