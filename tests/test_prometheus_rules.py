"""deploy/prometheus/: every rule file loads in Prometheus's own checker, the
unit tests of the rules pass under `promtool test rules`, and every hubbub_*
series a rule reads is one /metrics exposes (docs/operations.md's table,
which tests/test_operations_doc.py keeps true to the registry).

promtool comes with Debian's `prometheus` package (.ci/run installs it); a
machine without it fails here rather than skipping the rules' tests.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.test_operations_doc import documented

RULES = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"
RULE_FILES = sorted(RULES.glob("*.rules.yml"))
TEST_FILES = sorted(RULES.glob("*.test.yml"))
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def promtool() -> str:
    path = shutil.which("promtool")
    assert path is not None, "promtool not found: apt-get install prometheus (.ci/run does)"
    return path


def run_promtool(*args: str) -> str:
    done = subprocess.run([promtool(), *args], cwd=RULES, capture_output=True, text=True, timeout=60)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def test_there_are_rule_files_and_their_tests() -> None:
    assert {p.name for p in RULE_FILES} >= {"recording.rules.yml", "alerts.rules.yml"}
    assert TEST_FILES, "no *.test.yml in deploy/prometheus"


@pytest.mark.parametrize("rule_file", RULE_FILES, ids=lambda p: p.name)
def test_promtool_checks_rule_file(rule_file: Path) -> None:
    assert "SUCCESS" in run_promtool("check", "rules", rule_file.name)


@pytest.mark.parametrize("test_file", TEST_FILES, ids=lambda p: p.name)
def test_promtool_unit_tests_pass(test_file: Path) -> None:
    assert "SUCCESS" in run_promtool("test", "rules", test_file.name)


def rules() -> list[dict[str, str]]:
    return [
        rule for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]
    ]


def exposed_metric(series: str, histograms: set[str]) -> str:
    """The docs' name of a series a rule reads (a histogram's _bucket is its histogram's)."""
    for suffix in HISTOGRAM_SUFFIXES:
        if series.endswith(suffix) and series.removesuffix(suffix) in histograms:
            return series.removesuffix(suffix)
    return series


def test_rules_read_only_metrics_the_server_exposes() -> None:
    rows = documented()
    histograms = {name for name, (kind, _, _) in rows.items() if kind == "histogram"}
    read = {name for rule in rules() for name in re.findall(r"(?<![:\w])hubbub_[a-z0-9_]+(?![:\w])", rule["expr"])}
    assert read, "no hubbub_* series in the rules"
    unknown = sorted(name for name in read if exposed_metric(name, histograms) not in rows)
    assert not unknown, f"rules read series /metrics does not expose: {unknown}"


def test_every_alert_is_exercised_by_a_unit_test() -> None:
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    tested = {
        case["alertname"]
        for path in TEST_FILES
        for test in yaml.safe_load(path.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert alerts <= tested, f"alerts no unit test sees firing: {sorted(alerts - tested)}"
