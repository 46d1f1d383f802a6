"""The chart's PrometheusRule: valid Prometheus rules (promtool check) that fire when they should (promtool test)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from chart_render import VALUE_SETS, by_kind, manifests

HERE = Path(__file__).resolve().parent
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian package prometheus) is not installed")


def _groups(values: dict | None = None) -> list[dict]:
    (rule,) = by_kind(manifests(values or VALUE_SETS["monitoring"]), "PrometheusRule")
    return rule["spec"]["groups"]


def _rules_file(tmp_path: Path, values: dict | None = None) -> Path:
    path = tmp_path / "modelship-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": _groups(values)}, sort_keys=False))
    return path


def test_the_alerts_the_issue_asks_for_are_there() -> None:
    alerts = {r["alert"] for g in _groups() for r in g["rules"]}
    assert alerts >= {"ModelshipHighErrorRate", "ModelshipHighLatencyP99", "ModelshipCanaryAborted",
                      "ModelshipQueueSaturated", "ModelshipDriftDetected"}


@needs_promtool
@pytest.mark.parametrize("name", ["monitoring", "custom"])
def test_promtool_check_rules(tmp_path: Path, name: str) -> None:
    proc = subprocess.run([PROMTOOL, "check", "rules", str(_rules_file(tmp_path, VALUE_SETS[name]))],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


@needs_promtool
def test_promtool_check_rules_rejects_a_broken_expression(tmp_path: Path) -> None:
    groups = _groups()
    groups[0]["rules"][0]["expr"] = "sum by (namespace (rate(modelship_requests_total[5m]))"
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}))
    proc = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0


def _promtool_test(tmp_path: Path, rules: Path) -> subprocess.CompletedProcess[str]:
    spec = yaml.safe_load((HERE / "alert_rules_test.yaml").read_text())
    spec["rule_files"] = [str(rules)]
    test_file = tmp_path / "alert_rules_test.yaml"
    test_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    return subprocess.run([PROMTOOL, "test", "rules", str(test_file)], capture_output=True, text=True, timeout=120)


@needs_promtool
def test_promtool_unit_tests_of_the_alerts(tmp_path: Path) -> None:
    proc = _promtool_test(tmp_path, _rules_file(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


@needs_promtool
def test_promtool_unit_tests_fail_when_the_threshold_is_too_lax(tmp_path: Path) -> None:
    """The unit tests have teeth: with a 20% error threshold the error-rate alert never fires."""
    values = VALUE_SETS["monitoring"] | {"monitoring": VALUE_SETS["monitoring"]["monitoring"] | {
        "prometheusRule": {"enabled": True, "errorRate": {"threshold": 0.2}}}}
    proc = _promtool_test(tmp_path, _rules_file(tmp_path, values))
    assert proc.returncode != 0
    assert "ModelshipHighErrorRate" in proc.stdout + proc.stderr


def test_runbook_urls_when_a_base_is_given() -> None:
    values = {"monitoring": {"prometheusRule": {"enabled": True, "runbookBaseUrl": "https://runbooks.example.com/modelship"}}}
    for group in _groups(values):
        for rule in group["rules"]:
            assert rule["annotations"]["runbook_url"].startswith("https://runbooks.example.com/modelship#"), rule["alert"]
