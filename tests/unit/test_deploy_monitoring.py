"""Alerts, recording rules, ServiceMonitors and the Grafana dashboard.

The rules are unit-tested with `promtool test rules` (Debian's prometheus package) against the `spec` of
deploy/monitoring/prometheusrule.yaml itself, extracted to a plain rules file: never a hand copy. The
Prometheus Operator's CRDs are not installed on the local API server, so these objects are checked here:
promtool for every PromQL expression, structure for the rest.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

from controller.exporter.server import ExporterMetrics

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "deploy" / "monitoring"
RULE = MONITORING / "prometheusrule.yaml"
DASHBOARD = MONITORING / "dashboards" / "modelrollout.json"
BASE = REPO / "deploy" / "base"

# The series the rules and the dashboard may use: the exporter's counter (checked against the exporter
# below), the operator's metrics (its /metrics must provide these names), and Prometheus' own `up`.
OPERATOR_METRICS = {"modelrollout_rollouts", "modelrollout_rollbacks_total", "modelrollout_verdicts_total",
                    "modelrollout_time_to_recover_seconds_bucket", "modelrollout_reconcile_errors_total",
                    "modelrollout_canary_weight"}
EXPORTER_METRICS = {"modelrollout_predictions_total"}
# Grafana's variables, replaced by plausible values so promtool can parse the dashboard's queries.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "6h", "$__interval": "30s",
                     "$namespace": "moderation", "$inference_service": "nsfw-classifier"}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: hack/setup.sh installs Debian's prometheus package, which ships it")
    return path


def rule_spec(text: str | None = None) -> dict[str, Any]:
    return yaml.safe_load(RULE.read_text() if text is None else text)["spec"]


def write_rules(directory: Path, spec: dict[str, Any]) -> Path:
    """The PrometheusRule's spec is a plain Prometheus rules file: `groups:` and nothing else."""
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_rule_tests(directory: Path, spec: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    write_rules(directory, spec)
    tests = sorted((MONITORING / "tests").glob("*.yaml"))
    assert tests
    for test in tests:
        shutil.copy(test, directory / test.name)
    return subprocess.run([promtool(), "test", "rules", *(str(directory / t.name) for t in tests)],
                          capture_output=True, text=True, timeout=300, check=False)


def expressions(spec: dict[str, Any]) -> list[str]:
    return [rule["expr"] for group in spec["groups"] for rule in group["rules"]]


def series_names(expr: str) -> set[str]:
    """Metric names in an expression: identifiers with a selector or range after them, or standing alone."""
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    without_labels = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", without_strings)
    words = re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", without_labels)
    keywords = {"sum", "by", "without", "rate", "increase", "avg_over_time", "stddev_over_time", "count_over_time",
                "max_over_time", "histogram_quantile", "and", "or", "unless", "on", "ignoring", "group_left",
                "group_right", "le", "round", "changes", "variant", "class", "namespace", "inference_service",
                "metric", "result", "phase", "rollout", "m", "h", "d", "s"}
    return {word for word in words if word not in keywords and not word.isdigit()}


def test_rules_are_valid(tmp_path: Path) -> None:
    assert rule_spec()["groups"]
    result = subprocess.run([promtool(), "check", "rules", str(write_rules(tmp_path, rule_spec()))],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass(tmp_path: Path) -> None:
    result = run_rule_tests(tmp_path, rule_spec())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


# Each guard and threshold that a test pins; changing any of them must make promtool fail.
MUTATIONS = [
    ("+ 3 * inference_service_class", "+ 2 * inference_service_class"),  # the 3-sigma threshold
    ("share5m_samples1d >= 120", "share5m_samples1d >= 0"),  # the short-history guard
    ("rate5m > 0.1", "rate5m > 0.001"),  # the low-traffic guard
    ("(inference_service:modelrollout_predictions:rate5m > 0)",
     "inference_service:modelrollout_predictions:rate5m"),  # 0/0 = NaN would poison the daily mean
    ("increase(modelrollout_rollbacks_total[15m])", "increase(modelrollout_rollbacks_total[30m])"),
    ("for: 30m", "for: 20m"),  # inconclusive "too long"
]


def test_promtool_unit_tests_catch_a_changed_rule(tmp_path: Path) -> None:
    """The rule tests are not vacuous. Each promtool run replays a day at 1m steps, so they run side by side."""
    text = RULE.read_text()

    def survives(index: int) -> bool:
        old, new = MUTATIONS[index]
        assert old in text, old
        directory = tmp_path / str(index)
        directory.mkdir()
        return run_rule_tests(directory, rule_spec(text.replace(old, new, 1))).returncode == 0

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        survivors = [MUTATIONS[i] for i, survived in enumerate(pool.map(survives, range(len(MUTATIONS)))) if survived]
    assert not survivors, f"no promtool test noticed these changes: {survivors}"


def test_alerts_carry_severity_and_words_for_the_on_call() -> None:
    alerts = [rule for group in rule_spec()["groups"] for rule in group["rules"] if "alert" in rule]
    assert {a["alert"] for a in alerts} >= {"ModelRolloutClassShareSpike", "ModelRolloutRolledBack",
                                            "ModelRolloutAnalysisInconclusive"}
    for alert in alerts:
        assert alert["labels"]["severity"] in ("warning", "critical"), alert["alert"]
        assert alert["annotations"]["summary"] and alert["annotations"]["description"], alert["alert"]


def test_rules_and_dashboard_use_only_series_that_exist() -> None:
    spec = rule_spec()
    recorded = {rule["record"] for group in spec["groups"] for rule in group["rules"] if "record" in rule}
    known = OPERATOR_METRICS | EXPORTER_METRICS | recorded | {"up", "ALERTS"}
    for expr in [*expressions(spec), *dashboard_expressions()]:
        assert series_names(expr) <= known, (expr, series_names(expr) - known)


def test_exporter_exposes_the_series_the_rules_count() -> None:
    """The exporter's real registry: metric name and label names as the rules and judges query them."""
    metrics = ExporterMetrics()
    metrics.predictions.labels("moderation", "nsfw-classifier", "canary", "7", "nsfw").inc()
    exposed = generate_latest(metrics.registry).decode()
    line = next(line for line in exposed.splitlines() if line.startswith("modelrollout_predictions_total{"))
    labels = set(re.findall(r'(\w+)="', line))
    assert labels == {"namespace", "inference_service", "variant", "model_version", "class"}


def test_service_monitors_scrape_the_services() -> None:
    monitors = [doc for doc in yaml.safe_load_all((MONITORING / "servicemonitor.yaml").read_text()) if doc]
    services = [obj for name in ("controller.yaml", "exporter.yaml")
                for obj in yaml.safe_load_all((BASE / name).read_text()) if obj and obj["kind"] == "Service"]
    jobs = set()
    for monitor in monitors:
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        selector = monitor["spec"]["selector"]["matchLabels"]
        matched = [s for s in services if selector.items() <= s["metadata"]["labels"].items()]
        assert len(matched) == 1, monitor["metadata"]["name"]
        ports = {p["name"] for p in matched[0]["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in ports
            # Both expose a `namespace` label of their own (the model's or the rollout's): keep it.
            assert endpoint["honorLabels"] is True
            jobs |= {r["replacement"] for r in endpoint["relabelings"] if r["targetLabel"] == "job"}
    target_down = next(rule for group in rule_spec()["groups"] for rule in group["rules"]
                       if rule.get("alert") == "ModelRolloutTargetDown")
    assert set(re.search(r'job=~"([^"]+)"', target_down["expr"]).group(1).split("|")) == jobs


# --- Grafana dashboard -----------------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_expressions() -> list[str]:
    board = dashboard()
    exprs = [target["expr"] for panel in board["panels"] for target in panel.get("targets", [])]
    exprs += [annotation["expr"] for annotation in board["annotations"]["list"] if "expr" in annotation]
    return exprs


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    rules = []
    for index, expr in enumerate(dashboard_expressions()):
        for variable, value in sorted(GRAFANA_VARIABLES.items(), key=lambda item: -len(item[0])):
            expr = expr.replace(variable, value)
        assert "$" not in expr, expr
        rules.append({"record": f"dashboard:query{index}", "expr": expr})
    path = write_rules(tmp_path, {"groups": [{"name": "dashboard", "rules": rules}]})
    result = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_shows_what_the_on_call_needs() -> None:
    board = dashboard()
    panels = board["panels"]
    assert board["uid"] == "modelrollout"
    assert len({p["id"] for p in panels}) == len(panels)
    titles = {p["title"] for p in panels}
    assert {"Class rate per variant", "Canary weight", "Rollbacks"} <= titles
    by_title = {p["title"]: p for p in panels}
    assert "by (variant, class)" in by_title["Class rate per variant"]["targets"][0]["expr"]
    assert any("modelrollout_canary_weight" in t["expr"] for t in by_title["Canary weight"]["targets"])
    assert "modelrollout_rollbacks_total" in by_title["Rollbacks"]["targets"][0]["expr"]
    # Every query goes to the datasource the viewer picks, not to a UID from someone's Grafana.
    for panel in panels:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert set(panel["gridPos"]) == {"x", "y", "w", "h"}
    variables = {v["name"] for v in board["templating"]["list"]}
    assert variables == {"datasource", "namespace", "inference_service"}
