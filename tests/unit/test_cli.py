"""The CLI answers fast because heavy libraries stay out of its import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HEAVY = ("pandas", "feast", "evidently", "mlflow", "pyspark", "lightgbm", "sklearn", "fastapi", "duckdb")


def test_cli_import_stays_light() -> None:
    code = f"import sys, rtml.cli; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_help_lists_commands() -> None:
    out = subprocess.run([sys.executable, "-m", "rtml", "--help"], capture_output=True, text=True, check=True)
    assert "demo" in out.stdout


def test_demo_reaches_its_summary(data_dir: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "rtml", "demo", "--hours", "8"], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "events in" in out.stdout
    assert (data_dir / "demo").is_dir()
