"""`rtml down --purge --yes` in the spirit of `rm -rf` safety: what is not provably rtml's own is
refused (exit 2, a clear reason) and left exactly as it was, files, Redis keys and tables.

Each case runs the real command line in a child process and compares a snapshot of everything
it could reach (the file tree around it, the whole keyspace of a Redis database and the whole
catalog of a PostgreSQL database of the test's own: see conftest.Isolated) before and after.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Isolated

from rtml.config import MARKER, get_settings
from rtml.ops.purge import PurgeRefused, plan_purge, refusal


def tree(root: Path) -> dict[str, str]:
    """Every path under root (symlinks as links, never followed) with its content's digest."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = f"-> {os.readlink(path)}"
            elif path.is_file():
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                out[rel] = "dir"
    return out


def purge(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rtml", "down", "--purge", "--yes"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, **env},
    )


@pytest.fixture
def user_files(tmp_path: Path) -> Path:
    """A user's directory: documents, a hidden folder, a file rtml also names (logs/)."""
    home = tmp_path / "user"
    (home / "docs").mkdir(parents=True)
    (home / "docs" / "thesis.tex").write_text("\\documentclass{article}")
    (home / ".config").mkdir()
    (home / ".config" / "app.ini").write_text("[a]\nb = 1\n")
    (home / "logs").mkdir()
    (home / "logs" / "mine.log").write_text("keep")
    return home


def test_a_directory_rtml_did_not_create_is_refused(data_dir: Path, tmp_path: Path, user_files: Path) -> None:
    before = tree(tmp_path)
    out = purge({"RTML_DATA_DIR": str(user_files)}, cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "no rtml marker" in out.stderr and MARKER in out.stderr
    assert tree(tmp_path) == before


def test_a_symlink_is_never_followed(data_dir: Path, tmp_path: Path, user_files: Path) -> None:
    """Neither a link to a user's directory nor a link to a real rtml data directory."""
    link = tmp_path / "link"
    link.symlink_to(user_files)
    real = get_settings(data_dir=tmp_path / "real")
    real.path("stream.sqlite").write_text("x")  # a real, marked data directory
    link2 = tmp_path / "link2"
    link2.symlink_to(real.root)
    before = tree(tmp_path)
    for target in (link, link2):
        out = purge({"RTML_DATA_DIR": str(target)}, cwd=tmp_path)
        assert out.returncode == 2, out.stdout + out.stderr
        assert "is a symlink" in out.stderr and "never follows a symlink" in out.stderr
    assert tree(tmp_path) == before


def test_a_symlink_inside_the_data_directory_is_removed_not_followed(
    data_dir: Path, tmp_path: Path, user_files: Path
) -> None:
    settings = get_settings()
    settings.path("stream.sqlite").write_text("x")
    (settings.root / "reports").mkdir()
    (settings.root / "reports" / "mine").symlink_to(user_files)
    (settings.root / "latest").symlink_to(user_files / "docs" / "thesis.tex")
    before = tree(user_files)
    out = purge({}, cwd=tmp_path)
    assert out.returncode == 0 and "purged" in out.stdout, out.stdout + out.stderr
    assert not data_dir.exists() and not data_dir.is_symlink()
    assert tree(user_files) == before


def test_an_empty_data_dir_setting_never_means_the_current_directory(data_dir: Path, user_files: Path) -> None:
    before = tree(user_files)
    out = purge({"RTML_DATA_DIR": ""}, cwd=user_files)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "current directory" in out.stderr
    assert tree(user_files) == before


@pytest.mark.parametrize("where", ["/", "home", "cwd", "ancestor"])
def test_root_home_and_the_current_directory_or_its_ancestors_are_refused(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    (tmp_path / "a" / MARKER).write_text('{"profile": "embedded", "namespace": "x"}')  # even marked
    monkeypatch.chdir(work)
    target = {"/": Path("/"), "home": Path.home(), "cwd": work, "ancestor": tmp_path / "a"}[where]
    settings = get_settings(data_dir=target) if where != "ancestor" else None
    why = refusal(settings or get_settings(data_dir=target), services=False)
    assert why is not None and any(w in why for w in ("root", "home", "current directory")), why
    with pytest.raises(PurgeRefused):
        plan_purge(get_settings(data_dir=target), services=False)
    assert (tmp_path / "a" / MARKER).exists() and work.is_dir()


@pytest.mark.parametrize("namespace", ["a*", "rtml_*", "public", "pg_catalog", "information_schema", "Caps", "x-y"])
def test_a_namespace_that_is_no_identifier_is_refused_and_nothing_changes(
    data_dir: Path, tmp_path: Path, isolated: Isolated, namespace: str
) -> None:
    """`a*` would match every pipeline's keys starting with a, `public` is PostgreSQL's schema."""
    import psycopg

    isolated.redis.set("abc:session", "another pipeline")
    isolated.redis.set("rtml_0123456789:stream:tx", "another rtml")
    with psycopg.connect(isolated.postgres_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.keep (x int)")
    keys, catalog, files = isolated.keyspace(), isolated.catalog(), tree(tmp_path)
    env = {
        "RTML_PROFILE": "services",
        "RTML_NAMESPACE": namespace,
        "RTML_REDIS_URL": isolated.redis_url,
        "RTML_POSTGRES_DSN": isolated.postgres_dsn,
    }
    out = purge(env, cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"invalid namespace {namespace!r}" in out.stderr and "^[a-z][a-z0-9_]{0,40}$" in out.stderr
    assert isolated.keyspace() == keys and isolated.catalog() == catalog and tree(tmp_path) == files


def test_services_elsewhere_than_the_marker_records_are_refused(
    data_dir: Path, tmp_path: Path, isolated: Isolated, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A data directory made against one Redis never purges another one's keys."""
    monkeypatch.setenv("RTML_PROFILE", "services")
    monkeypatch.setenv("RTML_REDIS_URL", isolated.redis_url)
    monkeypatch.setenv("RTML_POSTGRES_DSN", isolated.postgres_dsn)
    settings = get_settings()
    assert settings.root.is_dir()  # created, with its marker
    ns = settings.namespace
    other = f"redis://127.0.0.1:6379/{(isolated.redis_db + 1) % 16}"
    before = tree(tmp_path)
    out = purge({"RTML_REDIS_URL": other}, cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "purge would delete another pipeline's data" in out.stderr.replace("\n", " ")
    assert tree(tmp_path) == before
    assert get_settings().namespace == ns


def test_the_feature_store_file_holding_passwords_is_owner_only(data_dir: Path) -> None:
    from rtml.features.feast_repo import ensure_repo, repo_dir

    settings = get_settings()
    ensure_repo(settings)
    path = repo_dir(settings) / "feature_store.yaml"
    assert path.stat().st_mode & 0o777 == 0o600
    path.chmod(0o644)  # an older rtml's file: tightened on the next start
    ensure_repo(settings)
    assert path.stat().st_mode & 0o777 == 0o600
