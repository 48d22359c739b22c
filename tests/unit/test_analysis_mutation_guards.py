"""Behaviour the live-analysis tests left unchecked: each test fails on a mutation that survived every other test
(a swapped canary and stable, a threshold read from stable, a maxRate null taken as odds, ...)."""
from __future__ import annotations

from datetime import timedelta

import pytest
from test_prometheus_provider import EMPTY_VECTOR, FRESHNESS, NOW, Garbage, garbage, matrix, vector  # noqa: F401 - a fixture

from controller.analysis.judges import ProportionCriteria, baseline_judge, proportion_judge, threshold_judge
from controller.analysis.prometheus import PrometheusProvider
from controller.analysis.queries import QueryScope, promql_duration, render, without_comments
from controller.analysis.runner import AnalysisRequest, run_analysis
from controller.api.spec import MetricSpec, ProportionMetric, ThresholdMetric
from controller.exporter.events import (
    CloudEvent,
    DecodeOptions,
    MalformedEvent,
    predicted_classes,
    prediction_from_event,
)
from controller.verdict import Outcome

EV = 'sum(increase(p{ {{selector}}, c="nsfw"}[{{window}}]))'
TOT = "sum(increase(p{ {{selector}} }[{{window}}]))"
HISTORY = [(20, 10_000), (23, 10_400), (18, 9_700), (21, 10_100), (19, 9_900), (22, 10_050), (20, 10_000)]


def _canary_routes(g: Garbage, canary: tuple[float, float], stable: tuple[float, float]) -> None:
    g.answer(200, EMPTY_VECTOR)
    g.routes[("/api/v1/query", FRESHNESS)] = vector(2)
    g.routes[("/api/v1/query", 'model_version="7", c="nsfw"')] = vector(canary[0])
    g.routes[("/api/v1/query", 'model_version="7" }')] = vector(canary[1])
    g.routes[("/api/v1/query", 'model_version!="7", c="nsfw"')] = vector(stable[0])
    g.routes[("/api/v1/query", 'model_version!="7" }')] = vector(stable[1])


# R17: the runner hands the canary's counts to the judge as the canary's, not stable's.
def test_runner_a_backdoored_canary_fails(garbage: Garbage) -> None:  # noqa: F811
    _canary_routes(garbage, canary=(300, 1000), stable=(10, 9000))
    request = AnalysisRequest("ns", "svc", "canary", NOW - timedelta(minutes=10), NOW, candidate_version="7")
    (v,) = run_analysis([MetricSpec("nsfw", ProportionMetric(events=EV, total=TOT))], request,
                        PrometheusProvider(garbage.url, retries=0))
    assert v.outcome is Outcome.FAIL, v.reason
    assert v.evidence["canary"]["rate"] > v.evidence["stable"]["rate"]


# R11: a threshold in canary mode measures the canary's (candidate's) series, not stable's.
def test_runner_threshold_in_canary_mode_reads_the_candidate(garbage: Garbage) -> None:  # noqa: F811
    _canary_routes(garbage, canary=(0, 0), stable=(0, 0))
    garbage.routes = {("/api/v1/query", FRESHNESS): vector(2), ("/api/v1/query", 'model_version="7"'): vector(50),
                      ("/api/v1/query", 'model_version!="7"'): vector(0)}
    request = AnalysisRequest("ns", "svc", "canary", NOW - timedelta(minutes=10), NOW, candidate_version="7")
    metric = MetricSpec("errors", threshold=ThresholdMetric("sum(increase(e{ {{selector}} }[{{window}}]))", max=0))
    (v,) = run_analysis([metric], request, PrometheusProvider(garbage.url, retries=0))
    assert v.outcome is Outcome.FAIL, v.reason
    assert 'model_version="7"' in v.evidence["queries"]["value"]


# R09: a pair where only one template uses {{selector}} is still checked for freshness.
def test_runner_mixed_templates_are_checked_for_freshness(garbage: Garbage) -> None:  # noqa: F811
    garbage.answer(200, vector(500))
    garbage.routes[("/api/v1/query", FRESHNESS)] = EMPTY_VECTOR  # the arm stopped reporting
    garbage.bodies["/api/v1/query_range"] = matrix(NOW - timedelta(seconds=90))
    metric = MetricSpec("nsfw", ProportionMetric(events=EV, total='sum(increase(p{variant={{variant}}}[{{window}}]))'))
    request = AnalysisRequest("ns", "svc", "canary", NOW - timedelta(minutes=10), NOW, candidate_version="7")
    (v,) = run_analysis([metric], request, PrometheusProvider(garbage.url, retries=0))
    assert v.outcome is Outcome.INCONCLUSIVE and "StaleSeries" in v.reason, v.reason


# R08: a bake with no previous version reads every other version's history, not the candidate's own.
def test_runner_bake_without_baseline_reads_other_versions(garbage: Garbage) -> None:  # noqa: F811
    garbage.answer(200, vector(40))
    garbage.routes[("/api/v1/query", FRESHNESS)] = vector(2)
    request = AnalysisRequest("ns", "svc", "bake", NOW - timedelta(hours=1), NOW, baseline_window=timedelta(days=3),
                              candidate_version="7")
    (v,) = run_analysis([MetricSpec("nsfw", ProportionMetric(events=EV, total=TOT))], request,
                        PrometheusProvider(garbage.url, retries=0))
    assert 'model_version!="7"' in v.evidence["queries"]["history_events"], v.evidence["queries"]


# J12: maxRate's null is a rate: a canary at 45% under maxRate 50% is not failed by the ceiling.
def test_max_rate_null_is_the_rate_itself() -> None:
    v = proportion_judge("nsfw", 4_500, 10_000, 4_500, 10_000, ProportionCriteria(max_rate=0.5))
    assert v.outcome is Outcome.PASS, v.reason


# J32: phi is Pearson's chi-square over its k - 1 degrees of freedom.
def test_dispersion_uses_k_minus_one_degrees_of_freedom() -> None:
    days = [(20, 10_000), (23, 10_400), (18, 9_700), (21, 10_100), (19, 9_900), (22, 10_050), (40, 10_000)]
    p = sum(e for e, _ in days) / sum(t for _, t in days)
    chi2 = sum((e - t * p) ** 2 / (t * p * (1 - p)) for e, t in days)
    v = baseline_judge("nsfw", 20, 10_000, days)
    assert v.evidence["dispersion"] == pytest.approx(chi2 / (len(days) - 1))


# J34 / J35: a day only somewhat out of line (Bonferroni p well above 0.05) is not left out.
def test_a_mildly_unusual_day_is_kept() -> None:
    days = [(20, 10_000), (23, 10_400), (18, 9_700), (21, 10_100), (19, 9_900), (22, 10_050), (34, 10_000)]
    v = baseline_judge("nsfw", 20, 10_000, days)
    assert not any(d.get("left_out") for d in v.evidence["history"]), v.evidence["history"]


# J41: a day expecting under 5 events is not tested as an outlier (but it is kept).
def test_a_small_day_is_not_tested_as_an_outlier() -> None:
    v = baseline_judge("nsfw", 20, 10_000, [*HISTORY, (5, 100)])
    assert "left_out" not in v.evidence["history"][-1], v.evidence["history"][-1]


# J27: min == max is a valid (exact) bound.
def test_threshold_min_equal_max_is_usable() -> None:
    assert threshold_judge("x", 0.5, minimum=0.5, maximum=0.5).outcome is Outcome.PASS


# Q17: {{namespace}} is escaped like every other value.
def test_namespace_variable_is_escaped() -> None:
    scope = QueryScope(namespace='a"b', target="t", variant="canary", window="60s")
    assert render("{{namespace}}", scope) == '"a\\"b"'


# Q06: a zero-length range is still a valid PromQL range.
def test_duration_is_at_least_one_second() -> None:
    assert promql_duration(0) == "1s"


# Q15: a comment ends at the first line end.
def test_comment_ends_at_the_first_line_end() -> None:
    assert without_comments("a # c\nb\rc") == "a \nb\rc"


# E18: a negative class index is refused, not read from the end of the names.
def test_negative_class_index_is_refused() -> None:
    with pytest.raises(MalformedEvent):
        predicted_classes({"predictions": [-1]}, DecodeOptions(("safe", "nsfw")))


# E11: a tensor with more values than its shape is refused.
def test_tensor_with_extra_values_is_refused() -> None:
    out = {"outputs": [{"name": "p", "shape": [1, 2], "datatype": "FP32", "data": [0.9, 0.1, 0.2, 0.8]}]}
    with pytest.raises(MalformedEvent):
        predicted_classes(out, DecodeOptions(("safe", "nsfw")))


# E12: a 1-D tensor whose length differs from its shape is refused.
def test_one_d_tensor_of_the_wrong_length_is_refused() -> None:
    out = {"outputs": [{"name": "p", "shape": [1], "datatype": "INT64", "data": [1, 0]}]}
    with pytest.raises(MalformedEvent):
        predicted_classes(out, DecodeOptions(("safe", "nsfw")))


# E28: a float-typed class index (V2 FP32 argmax) is an index, not a score.
def test_float_class_index_is_an_index() -> None:
    assert predicted_classes({"predictions": [2.0]}, DecodeOptions(("a", "b", "c"))) == ("c",)


def _event(**attrs: str) -> CloudEvent:
    base = {"id": "1", "type": "org.kubeflow.serving.inference.response", "specversion": "1.0",
            "namespace": "ns", "inferenceservicename": "svc", **attrs}
    return CloudEvent("1", base["type"], base, {"predictions": ["nsfw"]})


# E22: the logger URL's model_version (the operator's) wins over the event's extension.
def test_logger_url_version_wins() -> None:
    p = prediction_from_event(_event(modelversion="1"), "model_version=7", DecodeOptions())
    assert p.model_version == "7"


# E24: an over-long model version is refused like every other label.
def test_over_long_model_version_is_refused() -> None:
    with pytest.raises(MalformedEvent):
        prediction_from_event(_event(), "model_version=" + "7" * 300, DecodeOptions())
