"""deploy/grafana/ and the Prometheus and Grafana services of docker-compose.yml
stay consistent with each other and with /metrics: the dashboard reads only
documented metrics through the provisioned data source, and every file a
service mounts exists. tests/test_prometheus_live.py executes the queries.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.test_deploy_files import DEV_STACK, services
from tests.test_operations_doc import documented
from tests.test_prometheus_rules import RULE_FILES, exposed_metric, promtool

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
SECTIONS = (
    "Requests",
    "Errors",
    "Connections",
    "Messages and deliveries",
    "Stores",
    "Broker and presence",
    "Connection pools",
    "Process",
)
"""The dashboard's rows: what issue 14 asks a dashboard to show."""


def load(path: Path) -> dict[str, Any]:
    document = json.loads(path.read_text())
    assert isinstance(document, dict)
    return document


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    found: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every panel target."""
    return [
        (panel["title"], target["expr"])
        for panel in panels(dashboard)
        if panel["type"] != "row"
        for target in panel.get("targets", [])
    ]


def test_there_is_a_dashboard_with_every_section() -> None:
    assert [path.name for path in DASHBOARDS] == ["hubbub.json"]
    dashboard = load(DASHBOARDS[0])
    rows = [panel["title"] for panel in dashboard["panels"] if panel["type"] == "row"]
    assert list(SECTIONS) == rows


def test_every_panel_has_a_query_through_the_datasource_variable() -> None:
    for path in DASHBOARDS:
        dashboard = load(path)
        ids = [panel["id"] for panel in panels(dashboard)]
        assert len(ids) == len(set(ids)), f"{path.name}: panel ids repeat"
        for panel in panels(dashboard):
            if panel["type"] == "row":
                continue
            assert panel.get("targets"), f"{path.name}: panel {panel['title']!r} has no query"
            assert panel.get("description"), f"{path.name}: panel {panel['title']!r} says nothing of what it shows"
            for target in [panel, *panel["targets"]]:
                assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]


def test_the_dashboard_reads_only_metrics_the_server_exposes_and_the_rules_record() -> None:
    rows = documented()
    histograms = {name for name, (kind, _, _) in rows.items() if kind == "histogram"}
    recorded = {
        rule["record"]
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    }
    for path in DASHBOARDS:
        for title, expr in queries(load(path)):
            names = set(re.findall(r"(?<![:\w])((?:hubbub|process|python)_[a-z0-9_]+)(?![:\w])", expr))
            unknown = sorted(name for name in names if exposed_metric(name, histograms) not in rows)
            assert not unknown, f"{title!r} reads series /metrics does not expose: {unknown}"
            for rule in re.findall(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", expr):
                assert rule in recorded, f"{title!r} reads {rule}, which no recording rule records"


def test_the_provisioned_datasource_is_the_dashboards_default() -> None:
    provisioned = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (datasource,) = provisioned["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    for path in DASHBOARDS:
        variables = {v["name"]: v for v in load(path)["templating"]["list"]}
        assert variables["datasource"]["current"]["value"] == datasource["uid"]


def test_compose_runs_prometheus_and_grafana_on_these_files() -> None:
    found = services()
    prometheus, grafana = found["prometheus"], found["grafana"]
    assert prometheus["image"].startswith("prom/prometheus:") and grafana["image"].startswith("grafana/grafana:")
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in [*prometheus["volumes"], *grafana["volumes"]]}
    for source in mounts.values():
        if source.startswith("./"):
            assert (ROOT / source).exists(), f"compose mounts {source}, which does not exist"
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert mounts["/etc/prometheus/prometheus.yml"] == "./deploy/prometheus/prometheus.yml"
    for rule_file in config["rule_files"]:
        assert mounts[rule_file].startswith("./deploy/prometheus/"), f"{rule_file} is not mounted"
    assert {Path(mounts[rule_file]).name for rule_file in config["rule_files"]} == {p.name for p in RULE_FILES}
    (job,) = config["scrape_configs"]
    assert job["static_configs"][0]["targets"] == ["hubbub-1:8765", "hubbub-2:8765"]
    dashboards = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "hubbub.yml").read_text())
    (provider,) = dashboards["providers"]
    assert mounts[provider["options"]["path"]] == "./deploy/grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"


def test_dev_stack_renders_a_prometheus_config_promtool_accepts(tmp_path: Path) -> None:
    """scripts/dev-stack's Prometheus: deploy/prometheus/prometheus.yml re-pointed at
    the two instances and at the rule files in this checkout, valid for promtool."""
    bash = shutil.which("bash")
    assert bash is not None
    env = {**os.environ, "DEV_STACK_INSTANCE_PORTS": "18701 18702"}
    rendered = subprocess.run(
        [bash, str(DEV_STACK), "prometheus-conf"], capture_output=True, text=True, timeout=30, env=env
    )
    assert rendered.returncode == 0, rendered.stderr
    config = yaml.safe_load(rendered.stdout)
    assert config["scrape_configs"][0]["static_configs"][0]["targets"] == ["127.0.0.1:18701", "127.0.0.1:18702"]
    assert config["rule_files"] == [str(ROOT / "deploy" / "prometheus" / Path(p).name) for p in config["rule_files"]]
    path = tmp_path / "prometheus.yml"
    path.write_text(rendered.stdout)
    checked = subprocess.run([promtool(), "check", "config", str(path)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout + checked.stderr
