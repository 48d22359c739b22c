"""The runner's own queries on the exporter's counter (review s27prom, findings 2 and 3): built from escaped values
only, on the exporter's own name and labels; and how the bake, and a failing check, are judged."""

from __future__ import annotations

from datetime import timedelta

import pytest

from controller.analysis.prometheus import PrometheusProvider
from controller.analysis.queries import QueryScope, TemplateError, prediction_series_queries, predictions_query
from controller.analysis.runner import AnalysisRequest, run_analysis
from controller.api.spec import MetricSpec, ThresholdMetric
from controller.exporter.server import PREDICTION_LABELS, PREDICTIONS_METRIC
from controller.verdict import Outcome
from tests.unit.test_prometheus_provider import BAKE_METRIC, EMPTY_VECTOR, FRESHNESS, NOW, Garbage, garbage, vector

__all__ = ["garbage"]  # a fixture
HOSTILE_NAMESPACE = 'ns"} or vector(99999) #'
HOSTILE_VERSION = '7"}\n or vector(1)'
SERIES = "count(modelrollout_predictions_total{"
LABEL_SETS = "count(count by ("
PREDICTIONS = "sum(increase(modelrollout_predictions_total{"
THRESHOLD = MetricSpec("errors", threshold=ThresholdMetric("sum(increase(e{ {{selector}} }[{{window}}]))", max=0))


def test_the_checks_read_the_exporters_counter_by_its_own_labels_with_values_escaped() -> None:
    scope = QueryScope(HOSTILE_NAMESPACE, "svc", "canary", "60s", versions=(HOSTILE_VERSION,))
    selector = r'namespace="ns\"} or vector(99999) #", inference_service="svc", model_version="7\"}\n or vector(1)"'
    series, label_sets = prediction_series_queries(scope)
    assert series == f"count({PREDICTIONS_METRIC}_total{{{selector}}})"
    assert label_sets == (f"count(count by ({', '.join(PREDICTION_LABELS)}) ({PREDICTIONS_METRIC}_total"
                          f"{{{selector}}}))")
    assert predictions_query(scope) == f"sum(increase({PREDICTIONS_METRIC}_total{{{selector}}}[60s]))"


@pytest.mark.parametrize(("scope", "refused"), [
    (QueryScope("ns", "svc", "canary", "60s) or vector(1", versions=("7",)), "not a PromQL duration"),
    (QueryScope("ns", "svc", "canary", "60s", versions=("7",), variant_label="v) or vector(1"),
     "invalid label name"),
])
def test_a_value_that_cannot_be_rendered_safely_is_refused(scope: QueryScope, refused: str) -> None:
    with pytest.raises(TemplateError, match=refused):
        predictions_query(scope) if "duration" in refused else prediction_series_queries(scope)


def test_a_bake_whose_exporter_is_read_twice_is_not_counted(garbage: Garbage) -> None:
    garbage.answer(200, vector(40))
    garbage.routes[("/api/v1/query", FRESHNESS)] = vector(4)
    garbage.routes[("/api/v1/query", LABEL_SETS)] = vector(2)
    garbage.routes[("/api/v1/query", SERIES)] = vector(4)
    request = AnalysisRequest("ns", "svc", "bake", NOW - timedelta(hours=3), NOW, baseline_window=timedelta(days=3),
                              candidate_version="7", baseline_version="6")
    (verdict,) = run_analysis([BAKE_METRIC], request, PrometheusProvider(garbage.url, retries=0))
    assert verdict.outcome is Outcome.INCONCLUSIVE, verdict
    assert verdict.reason.startswith("DuplicateSeries: the current arm: 4 series of modelrollout_predictions_total "
                                     "for 2 of the exporter's label sets"), verdict.reason
    assert verdict.evidence["failedQuery"] == verdict.evidence["queries"]["current_series"]
    assert not any('"6|unknown"' in asked["query"] for asked in garbage.asked)  # no history read: nothing counted


def test_a_failing_series_check_is_its_own_problem_not_a_pass(garbage: Garbage) -> None:
    garbage.answer(200, vector(0))
    garbage.routes[("/api/v1/query", FRESHNESS)] = vector(2)
    garbage.routes[("/api/v1/query", LABEL_SETS)] = b'{"status":"error","errorType":"timeout","error":"slow"}'
    request = AnalysisRequest("ns", "svc", "canary", NOW - timedelta(minutes=10), NOW, candidate_version="7")
    (verdict,) = run_analysis([THRESHOLD], request, PrometheusProvider(garbage.url, retries=0))
    assert verdict.outcome is Outcome.INCONCLUSIVE and verdict.reason.startswith("QueryRejected: the canary arm:"), (
        verdict)


@pytest.mark.parametrize(("answer", "window", "short"), [
    (EMPTY_VECTOR, timedelta(minutes=10), False), (vector(0), timedelta(minutes=10), False),
    (EMPTY_VECTOR, timedelta(seconds=30), True),
], ids=["no-series", "zero", "short-window"])
def test_a_canary_threshold_needs_canary_predictions(garbage: Garbage, answer: bytes,
                                                     window: timedelta, short: bool) -> None:
    garbage.answer(200, vector(0))
    garbage.routes[("/api/v1/query", FRESHNESS)] = vector(2)
    garbage.routes[("/api/v1/query", PREDICTIONS)] = answer
    request = AnalysisRequest("ns", "svc", "canary", NOW - window, NOW, candidate_version="7")
    (verdict,) = run_analysis([THRESHOLD], request, PrometheusProvider(garbage.url, retries=0))
    assert verdict.outcome is Outcome.INCONCLUSIVE, verdict
    assert verdict.reason.startswith("no canary traffic in the window: the candidate's predictions"), verdict.reason
    assert ("shorter than two scrapes" in verdict.reason) is short, verdict.reason
    assert 'model_version="7"' in verdict.evidence["queries"]["canary_predictions"]
    garbage.routes[("/api/v1/query", PREDICTIONS)] = vector(5)  # it served: the value is judged
    (verdict,) = run_analysis([THRESHOLD], request, PrometheusProvider(garbage.url, retries=0))
    assert verdict.outcome is Outcome.PASS, verdict


def test_a_bake_threshold_is_read_as_it_is(garbage: Garbage) -> None:
    """After promotion the promoted version takes every request: a 0 there is a count, not an unserved arm."""
    garbage.answer(200, vector(0))
    garbage.routes[("/api/v1/query", FRESHNESS)] = vector(2)
    request = AnalysisRequest("ns", "svc", "bake", NOW - timedelta(hours=1), NOW, baseline_window=timedelta(days=3),
                              candidate_version="7", baseline_version="6")
    (verdict,) = run_analysis([THRESHOLD], request, PrometheusProvider(garbage.url, retries=0))
    assert verdict.outcome is Outcome.PASS and not any(PREDICTIONS in a["query"] for a in garbage.asked), verdict
