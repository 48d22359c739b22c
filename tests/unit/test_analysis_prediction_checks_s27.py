"""The runner's own queries on the exporter's counter (review s27prom, findings 2 and 3): built from escaped values
only, on the exporter's own name and labels; and how the bake, and a failing check, are judged."""

from __future__ import annotations

from datetime import timedelta

import pytest

from controller.analysis.prometheus import PrometheusProvider
from controller.analysis.queries import (
    QueryScope,
    TemplateError,
    fewest_copies_query,
    prediction_series_queries,
    predictions_query,
)
from controller.analysis.runner import AnalysisRequest, run_analysis
from controller.api.spec import MetricSpec, ProportionMetric, ThresholdMetric
from controller.exporter.server import PREDICTION_LABELS, PREDICTIONS_METRIC
from controller.verdict import Outcome
from tests.unit.test_prometheus_provider import BAKE_METRIC, EMPTY_VECTOR, FRESHNESS, NOW, Garbage, garbage, vector

__all__ = ["garbage"]  # a fixture
HOSTILE_NAMESPACE = 'ns"} or vector(99999) #'
HOSTILE_VERSION = '7"}\n or vector(1)'
SERIES = "count(modelrollout_predictions_total{"
LABEL_SETS = "count(count by ("
PREDICTIONS = "sum(increase(modelrollout_predictions_total{"
FEWEST = "min(count by ("
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
], ids=["empty-increase", "zero", "short-window"])
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


# --- review s27r3: a failure is not hidden by the traffic rule, nor by DuplicateSeries when the copies are even ---


@pytest.mark.parametrize("served", [EMPTY_VECTOR, vector(0)], ids=["empty-increase", "flat"])
def test_a_canary_threshold_beyond_its_bound_fails_whatever_the_traffic(garbage: Garbage, served: bytes) -> None:
    """Every request of the canary errors: it answers no prediction, and its error count is the failure."""
    garbage.answer(200, vector(95))
    garbage.routes[("/api/v1/query", FRESHNESS)] = vector(2)
    garbage.routes[("/api/v1/query", LABEL_SETS)] = vector(2)
    garbage.routes[("/api/v1/query", SERIES)] = vector(2)
    garbage.routes[("/api/v1/query", PREDICTIONS)] = served
    request = AnalysisRequest("ns", "svc", "canary", NOW - timedelta(minutes=10), NOW, candidate_version="7")
    (verdict,) = run_analysis([THRESHOLD], request, PrometheusProvider(garbage.url, retries=0))
    assert verdict.outcome is Outcome.FAIL and verdict.reason == "95 is above the maximum 0", verdict
    assert not any(asked["query"].startswith(PREDICTIONS) for asked in garbage.asked)  # a fail needs no traffic


@pytest.mark.parametrize(("value", "outcome"), [(0, Outcome.PASS), (95, Outcome.FAIL)])
def test_a_canary_threshold_without_prediction_series_is_judged_as_it_reads(garbage: Garbage, value: float,
                                                                             outcome: Outcome) -> None:
    """No exporter: the query counts another metric, and nothing says whether the canary served."""
    garbage.answer(200, vector(value))
    garbage.routes[("/api/v1/query", FRESHNESS)] = vector(2)
    garbage.routes[("/api/v1/query", SERIES)] = EMPTY_VECTOR
    garbage.routes[("/api/v1/query", PREDICTIONS)] = EMPTY_VECTOR
    request = AnalysisRequest("ns", "svc", "canary", NOW - timedelta(minutes=10), NOW, candidate_version="7")
    (verdict,) = run_analysis([THRESHOLD], request, PrometheusProvider(garbage.url, retries=0))
    assert verdict.outcome is outcome, verdict
    assert "canary_predictions" not in verdict.evidence.get("queries", {}), verdict.evidence


PROPORTION = MetricSpec("nsfw", ProportionMetric(events='sum(increase(p{ {{selector}}, c="nsfw"}[{{window}}]))',
                                                 total="sum(increase(p{ {{selector}} }[{{window}}]))"))
CANARY_SERIES = 'count(modelrollout_predictions_total{namespace="ns", inference_service="svc", model_version="7"})'


def counts(garbage: Garbage, canary_events: float, canary_total: float, stable_events: float,
           stable_total: float) -> None:
    for text, value in (('model_version="7", c="nsfw"', canary_events), ('model_version="7" }', canary_total),
                        ('model_version!="7", c="nsfw"', stable_events), ('model_version!="7" }', stable_total)):
        garbage.routes[("/api/v1/query", text)] = vector(value)


@pytest.mark.parametrize(("canary_events", "series", "stable_series", "fewest", "divided"), [
    (400, 4, 4, 2, True), (100, 4, 4, 2, True), (400, 4, 4, 1, False), (400, 3, 3, 2, False), (400, 4, 2, 2, False),
], ids=["poisoned", "clean", "uneven-copies", "not-whole", "stable-read-once"])
def test_a_canary_read_twice_fails_only_on_counts_divided_by_even_copies(
        garbage: Garbage, canary_events: float, series: float, stable_series: float, fewest: float,
        divided: bool) -> None:
    """Two label sets per arm. Divided by 2, a 40% canary against a 10% stable still fails; a clean one is
    DuplicateSeries, as is every case where the copies are not the same whole number on every label set."""
    garbage.answer(200, vector(0))
    counts(garbage, canary_events, 1000, 1000, 10000)
    garbage.routes[("/api/v1/query", FRESHNESS)] = vector(2)
    garbage.routes[("/api/v1/query", CANARY_SERIES)] = vector(series)
    garbage.routes[("/api/v1/query", SERIES)] = vector(stable_series)
    garbage.routes[("/api/v1/query", LABEL_SETS)] = vector(2)
    garbage.routes[("/api/v1/query", FEWEST)] = vector(fewest)
    request = AnalysisRequest("ns", "svc", "canary", NOW - timedelta(minutes=10), NOW, candidate_version="7")
    provider = PrometheusProvider(garbage.url, retries=0)
    (verdict,) = run_analysis([PROPORTION], request, provider)
    window = verdict.evidence["window"]
    if divided and canary_events == 400:
        assert verdict.outcome is Outcome.FAIL, verdict
        assert verdict.reason.endswith("(on counts divided by 2: every prediction series is read 2 times, "
                                       "DuplicateSeries)"), verdict.reason
        assert "problem" not in verdict.evidence  # a failure, not an outage to wait for
        assert window["countsDividedBy"] == 2 and "DuplicateSeries" in window["dividedBecause"]
        assert verdict.evidence["canary"]["total"] == pytest.approx(1000 * window["countsScaledBy"] / 2)
        assert verdict.evidence["stable"]["total"] == pytest.approx(10000 * window["countsScaledBy"] / 2)
        return
    assert verdict.outcome is Outcome.INCONCLUSIVE, verdict
    assert verdict.reason.startswith(f"DuplicateSeries: the canary arm: {series:g} series of "
                                     "modelrollout_predictions_total for 2 of the exporter's label sets"), verdict
    assert verdict.evidence["problem"] == "DuplicateSeries"
    assert ("on the counts divided by 2 it did not fail" in verdict.reason) is divided, verdict.reason
    assert (FEWEST in " ".join(asked["query"] for asked in garbage.asked)) is (series == 4)


def test_a_threshold_read_twice_is_never_judged(garbage: Garbage) -> None:
    """The user's query may read the doubled scrape too, and how to undo it depends on the query: not divided."""
    garbage.answer(200, vector(95))
    garbage.routes[("/api/v1/query", FRESHNESS)] = vector(2)
    garbage.routes[("/api/v1/query", SERIES)] = vector(4)
    garbage.routes[("/api/v1/query", LABEL_SETS)] = vector(2)
    garbage.routes[("/api/v1/query", FEWEST)] = vector(2)
    request = AnalysisRequest("ns", "svc", "canary", NOW - timedelta(minutes=10), NOW, candidate_version="7")
    (verdict,) = run_analysis([THRESHOLD], request, PrometheusProvider(garbage.url, retries=0))
    assert verdict.outcome is Outcome.INCONCLUSIVE and verdict.reason.startswith("DuplicateSeries"), verdict


def test_a_bake_read_twice_fails_on_counts_divided_by_its_copies(garbage: Garbage) -> None:
    """The promoted version at 40% against three days at 10%, every series read twice: now's and the history's
    counts are both divided (a day read once is under-counted by it: conservative)."""
    garbage.answer(200, vector(0))
    for text, value in (('model_version="7", c="nsfw"', 400), ('model_version="7" }', 1000),
                        ('"6|unknown", c="nsfw"', 100), ('"6|unknown" }', 1000)):
        garbage.routes[("/api/v1/query", text)] = vector(value)
    garbage.routes[("/api/v1/query", FRESHNESS)] = vector(4)
    garbage.routes[("/api/v1/query", SERIES)] = vector(4)
    garbage.routes[("/api/v1/query", LABEL_SETS)] = vector(2)
    garbage.routes[("/api/v1/query", FEWEST)] = vector(2)
    request = AnalysisRequest("ns", "svc", "bake", NOW - timedelta(hours=3), NOW, baseline_window=timedelta(days=3),
                              candidate_version="7", baseline_version="6")
    (verdict,) = run_analysis([BAKE_METRIC], request, PrometheusProvider(garbage.url, retries=0))
    assert verdict.outcome is Outcome.FAIL and "on counts divided by 2" in verdict.reason, verdict
    share = verdict.evidence["window"]["countsScaledBy"]
    assert verdict.evidence["raw"]["current"]["total"] == pytest.approx(1000 * share / 2)
    assert [day["total"] for day in verdict.evidence["history"]] == pytest.approx([1000 * share / 2] * 3)


def test_a_copy_that_started_within_the_window_is_not_divided(garbage: Garbage) -> None:
    """Two copies of every label set at the window's end, but one of them scraped only since mid-window: halving the
    two would weight the window's end twice (a class mix that changed then would read as a higher rate), so the
    poisoned-looking counts stay DuplicateSeries, not a failure (review s27r6: a clean canary failed that way)."""
    garbage.answer(200, vector(0))
    counts(garbage, 400, 1000, 1000, 10000)
    garbage.routes[("/api/v1/query", FRESHNESS)] = vector(2)
    garbage.routes[("/api/v1/query", CANARY_SERIES)] = vector(4)
    garbage.routes[("/api/v1/query", SERIES)] = vector(4)
    garbage.routes[("/api/v1/query", LABEL_SETS)] = vector(2)
    garbage.routes[("/api/v1/query", "min_over_time((min(")] = vector(1)  # before FEWEST: the first match answers
    garbage.routes[("/api/v1/query", FEWEST)] = vector(2)
    request = AnalysisRequest("ns", "svc", "canary", NOW - timedelta(minutes=10), NOW, candidate_version="7")
    (verdict,) = run_analysis([PROPORTION], request, PrometheusProvider(garbage.url, retries=0))
    assert verdict.outcome is Outcome.INCONCLUSIVE, verdict
    assert verdict.evidence["problem"] == "DuplicateSeries"
    assert "countsDividedBy" not in verdict.evidence["window"]
    series = verdict.evidence["window"]["predictionSeries"]["canary"]
    assert series["fewestCopiesInWindow"] == 1 and "fewestCopies" not in series


def test_a_copy_counts_through_the_window_only_with_a_fresh_sample() -> None:
    """A copy that stopped without a staleness marker (an HA replica down) looks present for Prometheus' 5-minute
    lookback: counted so, a copy that stopped near the window's end got the counts divided and a clean canary failed
    (review s27final). Each step counts only copies sampled within two steps."""
    scope = QueryScope(namespace="ns", target="svc", variant="canary", window="600s", versions=("7",))
    series = 'modelrollout_predictions_total{namespace="ns", inference_service="svc", model_version="7"}'
    assert fewest_copies_query(scope, 15) == (
        "min_over_time((min(count by (namespace, inference_service, variant, model_version, class) "
        f"(last_over_time({series}[30s]))))[600s:15s])")
    assert fewest_copies_query(scope) == (
        f"min(count by (namespace, inference_service, variant, model_version, class) ({series}))")
