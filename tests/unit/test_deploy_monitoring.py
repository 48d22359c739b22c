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

from controller.api.status import Phase
from controller.exporter.server import BUSY_REASON, INTERNAL_REASON, TOO_LARGE_REASON, TOO_SLOW_REASON, ExporterMetrics
from controller.operator.metrics import RESULTS, OperatorMetrics

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "deploy" / "monitoring"
RULE = MONITORING / "prometheusrule.yaml"
DASHBOARD = MONITORING / "dashboards" / "modelrollout.json"
BASE = REPO / "deploy" / "base"

# The series the rules and the dashboard may use: the exporter's counter (checked against the exporter
# below), the operator's metrics (its /metrics must provide these names), and Prometheus' own `up`.
OPERATOR_METRICS = {"modelrollout_rollouts", "modelrollout_rollbacks_total", "modelrollout_verdicts_total",
                    "modelrollout_time_to_recover_seconds_bucket", "modelrollout_reconcile_errors_total",
                    "modelrollout_canary_weight", "modelrollout_status_writes_refused_total",
                    "modelrollout_kube_api_last_success_timestamp_seconds", "modelrollout_kube_api_failures_total"}
EXPORTER_METRICS = {"modelrollout_predictions_total", "modelrollout_unreadable_predictions_total",
                    "modelrollout_exporter_malformed_events_total"}
# Labels Prometheus puts on every scraped series: job and instance, and the Prometheus Operator's target labels
# (its `namespace` loses to the series' own where one has it: honorLabels).
TARGET_LABELS = {"job", "instance", "namespace", "service", "pod", "container", "endpoint"}
# Labels no query may select or group by, though a series has them.
UNUSABLE_LABELS = {
    # Says nothing about which revision is the canary: the controller drops `variant` from the logger URLs it
    # writes (controller/traffic/kserve.py) and KServe's agent calls every revision "default" (-> "stable").
    # What a revision serves is its model_version.
    "variant",
}
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
                "metric", "result", "phase", "rollout", "m", "h", "d", "s", "model_version", "job", "absent", "max",
                "service", "reason", "time", "kind"}
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
    # A refused status write is news at once, and while refusals go on.
    ("refused_total[15m]) > 0", "refused_total[15m]) > 1.5"),
    ("refused_total[15m])", "refused_total[5m])"),
    # One rollout's passing verdicts must not hide another's inconclusive ones under the same metric name.
    ('(sum without (result) (increase(modelrollout_verdicts_total{result=~"pass|fail"}[10m])) > 0)',
     'on (metric) (sum by (metric) (increase(modelrollout_verdicts_total{result=~"pass|fail"}[10m])) > 0)'),
    # One team namespace's exporter gone is not hidden by another's.
    ('unless on (job, namespace, service)', "unless on (job)"),
    ("max by (job, namespace, service)", "max by (job)"),
    ('max_over_time(up{job="modelrollout-exporter"}[1d])', 'max_over_time(up{job="modelrollout-exporter"}[1m])'),
    # An exporter that was never deployed (exporter.enabled=false) is not down.
    ('max_over_time(up{job="modelrollout-exporter"}[1d])', 'absent(up{job="modelrollout-exporter"})'),
    # The API server unusable: a last success 3 minutes old, for 2 minutes; an idle controller (no failures) is
    # not alerted; failures 5 minutes apart (the reconcile backoff's cap) still count.
    ("timestamp_seconds > 180", "timestamp_seconds > 600"),
    ("for: 2m", "for: 0m"),
    ("failures_total[10m])) > 0", "failures_total[10m])) >= 0"),
    ("failures_total[10m]", "failures_total[3m]"),
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


def metric_labels() -> dict[str, set[str]]:
    """Label names of each series, from the exporter's and the operator's real registries."""
    exporter = ExporterMetrics()
    exporter.predictions.labels("moderation", "nsfw-classifier", "", "7", "nsfw").inc()
    exporter.unreadable.labels("moderation", "nsfw-classifier", "", "7").inc()
    exporter.malformed.labels("NoClassNames").inc()
    operator = OperatorMetrics()
    operator.observe({"metadata": {"namespace": "moderation", "name": "nsfw-classifier"},
                      "spec": {"analysis": {"metrics": [{"name": "nsfw-rate"}]}}}, {"phase": "Pending"})
    labels: dict[str, set[str]] = {}
    for registry in (exporter.registry, operator.registry):
        for family in registry.collect():
            for sample in family.samples:
                labels.setdefault(sample.name, set()).update(sample.labels)
    return labels


def exposed_labels() -> dict[str, set[str]]:
    """Label names of each series as Prometheus stores it (with the target labels), and of each recorded one: the
    `by` labels of its expression, or else those of the series it reads."""
    labels = {name: found | TARGET_LABELS for name, found in metric_labels().items()}
    labels["up"] = set(TARGET_LABELS)
    for group in rule_spec()["groups"]:
        for rule in group["rules"]:
            if "record" in rule:
                by = re.search(r"\bby\s*\(([^)]*)\)", rule["expr"])
                labels[rule["record"]] = (set(re.findall(r"\w+", by.group(1))) if by else
                                          set().union(*(labels[name] for name in series_names(rule["expr"]))))
    return labels


def known_values() -> dict[str, set[str]]:
    """The values a label can have, for the labels whose values the product fixes."""
    monitors = [doc for doc in yaml.safe_load_all((MONITORING / "servicemonitor.yaml").read_text()) if doc]
    jobs = {r["replacement"] for m in monitors for e in m["spec"]["endpoints"] for r in e["relabelings"]
            if r["targetLabel"] == "job"}
    # Every reason the exporter drops an event for, as its code names them.
    source = "".join(path.read_text() for path in (REPO / "controller" / "exporter").glob("*.py"))
    reasons = set(re.findall(r'MalformedEvent\(\s*"(\w+)"', source))
    reasons |= {INTERNAL_REASON, TOO_LARGE_REASON, BUSY_REASON, TOO_SLOW_REASON}
    return {"result": set(RESULTS), "phase": {str(phase) for phase in Phase}, "job": jobs, "reason": reasons}


def label_problems(expr: str, labels: dict[str, set[str]], values: dict[str, set[str]]) -> list[str]:
    """Labels that the series an expression selects do not have, and literal values those labels never take."""
    problems = []
    in_expr = set().union(*(labels.get(name, set()) for name in series_names(expr))) - UNUSABLE_LABELS
    for name, matchers in re.findall(r"([a-zA-Z_:][\w:]*)?\s*\{([^}]*)\}", expr):
        has = (labels.get(name, set()) if name else in_expr) - UNUSABLE_LABELS
        for label, op, value in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', matchers):
            if label not in has:
                problems.append(f"{name}{{{label}{op}...}}: {name} has no usable label {label}")
            elif label in values and "$" not in value:
                unknown = set(value.split("|") if "~" in op else [value]) - values[label]
                if unknown:
                    problems.append(f"{label}{op}{value!r}: {label} is never {sorted(unknown)}")
    for clause, names in re.findall(r"\b(by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        for label in set(re.findall(r"\w+", names)) - in_expr:
            problems.append(f"{clause} ({label}): no series of the expression has a usable label {label}")
    return problems


def test_rules_and_dashboard_select_only_labels_and_values_that_exist() -> None:
    labels, values = exposed_labels(), known_values()
    board = dashboard()
    queries = [*expressions(rule_spec()), *dashboard_expressions(),
               *(v["definition"] for v in board["templating"]["list"] if "definition" in v)]
    problems = {expr: found for expr in queries if (found := label_problems(expr, labels, values))}
    assert not problems, problems


def test_label_check_refuses_what_no_series_has() -> None:
    labels, values = exposed_labels(), known_values()
    for expr in ('sum(rate(modelrollout_predictions_total{variant="canary"}[5m]))',
                 "sum by (variant) (rate(modelrollout_predictions_total[5m]))",
                 'modelrollout_verdicts_total{result="unknown"}', 'up{job=~"modelrollout-controller|prometheus"}',
                 'inference_service_class:modelrollout_predictions:share5m{model_version="7"}'):
        assert label_problems(expr, labels, values), expr
    assert not label_problems('sum by (model_version) (modelrollout_predictions_total{model_version="7"})',
                              labels, values)


def test_rule_tests_feed_the_labels_the_metrics_have() -> None:
    """promtool's input series carry exactly the labels the operator and the exporter give each series (plus
    Prometheus' target labels): a rule tested on labels the operator does not expose proves nothing."""
    own = metric_labels()
    for test in sorted((MONITORING / "tests").glob("*.yaml")):
        for group in yaml.safe_load(test.read_text())["tests"]:
            for item in group.get("input_series", []):
                name, matchers = re.fullmatch(r"([\w:]+)\{(.*)\}", item["series"]).groups()
                given = set(re.findall(r'(\w+)\s*=\s*"', matchers))
                if name in own:
                    assert own[name] <= given and given - TARGET_LABELS == own[name] - TARGET_LABELS, \
                        (test.name, item["series"], sorted(own[name]))


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
    assert {"Class rate per model version", "Class share per model version", "Canary weight", "Rollbacks"} <= titles
    by_title = {p["title"]: p for p in panels}
    for title in ("Class rate per model version", "Class share per model version"):
        assert "model_version, class)" in by_title[title]["targets"][0]["expr"], title
    assert any("modelrollout_canary_weight" in t["expr"] for t in by_title["Canary weight"]["targets"])
    # Unreadable answers per model version, as a share of all its answers (readable or not).
    unreadable = by_title["Unreadable answers per model version"]["targets"][0]["expr"]
    assert unreadable.count("modelrollout_unreadable_predictions_total") == 2 and "model_version)" in unreadable
    assert "modelrollout_rollbacks_total" in by_title["Rollbacks"]["targets"][0]["expr"]
    # Every query goes to the datasource the viewer picks, not to a UID from someone's Grafana.
    for panel in panels:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert set(panel["gridPos"]) == {"x", "y", "w", "h"}
    variables = {v["name"] for v in board["templating"]["list"]}
    assert variables == {"datasource", "namespace", "inference_service"}
