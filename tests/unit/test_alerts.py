"""The alerting rules shipped in the package, checked and unit-tested by Prometheus' promtool."""

from __future__ import annotations

import subprocess
from pathlib import Path

import rtml.monitoring

RULES = Path(rtml.monitoring.__file__).resolve().parent / "alerts.yml"
RULE_TESTS = Path(__file__).resolve().parent / "alerts_test.yml"


def test_the_rules_ship_in_the_package_and_promtool_accepts_them(promtool: str) -> None:
    out = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 6 rules found" in out.stdout


def test_each_alert_fires_on_its_condition_and_not_below_it(promtool: str) -> None:
    out = subprocess.run([promtool, "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    alerts = {line.split(":", 1)[1].strip() for line in RULES.read_text().splitlines() if "- alert:" in line}
    tested = {line.split(":", 1)[1].strip() for line in RULE_TESTS.read_text().splitlines() if "alertname:" in line}
    assert alerts == tested  # no alert goes untested
