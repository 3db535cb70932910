"""deploy/prometheus/alerts.yml: valid rules, and each rule fires (and stays quiet) as meant."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.monitoring import ALERTS

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "deploy/prometheus/alerts.yml"
RULE_TESTS = REPO / "deploy/prometheus/tests/alerts_test.yml"
def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail("promtool is not installed (Debian package 'prometheus')")
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=120,
                          check=False, cwd=REPO)


def test_rules_pass_promtool_check() -> None:
    r = promtool("check", "rules", str(RULES))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{len(ALERTS)} rules found" in r.stdout


def test_rule_unit_tests_pass() -> None:
    r = promtool("test", "rules", str(RULE_TESTS))
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_alert_is_defined_labelled_bilingual_and_tested() -> None:
    rules = [rule for g in yaml.safe_load(RULES.read_text())["groups"] for rule in g["rules"]]
    assert sorted(r["alert"] for r in rules) == sorted(ALERTS)
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert " / " in rule["annotations"]["summary"], rule["alert"]
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    for alert in ALERTS:
        cases = [c for t in tests for c in t["alert_rule_test"] if c["alertname"] == alert]
        assert any(c["exp_alerts"] for c in cases), f"{alert}: no firing case"
        assert any(not c["exp_alerts"] for c in cases), f"{alert}: no quiet case"
