"""What ships for Prometheus and Grafana: the alert rules pass ``promtool check rules`` and their own unit tests
(``promtool test rules``), the scrape configuration loads, the dashboard is well-formed, and every metric a
rule or a panel names is one the processes really export (a renamed metric would otherwise leave an alert
silently watching nothing)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from projector.health import Health
from projector.metrics import registry
from projector.status import PartitionStatus
from shared.prometheus_metrics import PrometheusMetrics
from shared.redis_client import NodeMemory

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "ledgerstream.json"
_NAME = re.compile(r"\bledger_[a-z_]+\b")


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail("CI=true and promtool is not installed (apt-get install prometheus)")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return found


def _promtool(promtool: str, *args: str, cwd: Path = PROMETHEUS) -> str:
    done = subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_alert_rules_are_valid_and_pass_their_tests(promtool: str) -> None:
    assert "SUCCESS: 11 rules found" in _promtool(promtool, "check", "rules", "alerts.yaml")
    assert "SUCCESS" in _promtool(promtool, "test", "rules", "alerts.test.yaml")


def test_every_alert_has_a_test_case_that_fires_it() -> None:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yaml").read_text())
    names = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    cases = yaml.safe_load((PROMETHEUS / "alerts.test.yaml").read_text())["tests"]
    fired = {check["alertname"] for case in cases for check in case["alert_rule_test"] if check["exp_alerts"]}
    assert fired == names


def test_the_scrape_configuration_loads(promtool: str) -> None:
    _promtool(promtool, "check", "config", "prometheus.yaml")


def _panels() -> list[dict[str, Any]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


def test_the_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource"}
    for panel in _panels():
        position = panel["gridPos"]
        assert position["x"] + position["w"] <= 24 and position["h"] > 0, panel["title"]
        assert panel["targets"] and all(target["expr"].strip() for target in panel["targets"]), panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"


def test_every_dashboard_query_is_valid_promql(promtool: str, tmp_path: Path) -> None:
    # promtool checks PromQL in rule files: each panel's query becomes a recording rule, Grafana's interval
    # variable replaced by what it stands for.
    rules = [{"record": f"dashboard:panel_{panel['id']}_{target['refId']}",
              "expr": target["expr"].replace("$__rate_interval", "1m")}
             for panel in _panels() for target in panel["targets"]]
    (tmp_path / "queries.yaml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert f"SUCCESS: {len(rules)} rules found" in _promtool(promtool, "check", "rules", "queries.yaml",
                                                             cwd=tmp_path)


def _exported() -> set[str]:
    """Every sample name the gateway's workers and health process and a projector replica expose."""
    prometheus = PrometheusMetrics()
    prometheus.request("/accounts", "POST", 201, 0.01)
    row = PartitionStatus(0, "r1", 1, 1, 0.5, 1, 0.5, 1.0, "1-0", "2-0", 0, 0, None)
    texts = [generate_latest(REGISTRY).decode(),
             generate_latest(registry(Health(), lambda: [row], lambda: [NodeMemory("redis", 1, 2)])).decode()]
    return {sample.name for text in texts for family in text_string_to_metric_families(text)
            for sample in family.samples}


def test_rules_and_panels_name_only_metrics_that_exist() -> None:
    exported = _exported()
    named = set(_NAME.findall((PROMETHEUS / "alerts.yaml").read_text()))
    named |= {name for panel in _panels() for target in panel["targets"] for name in _NAME.findall(target["expr"])}
    assert named and named <= exported, named - exported
