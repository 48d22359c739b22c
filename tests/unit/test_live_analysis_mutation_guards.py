"""Rules of the live-analysis code that only these tests hold: each fails on a mutant that survived every other
unit test (mutation review s24mutation; the mutant's id is named above each test)."""
from __future__ import annotations

import asyncio
import json
import math
from datetime import timedelta

import numpy as np
import pytest
import requests
from aiohttp.test_utils import TestClient, TestServer
from test_prometheus_provider import EMPTY_VECTOR, FRESHNESS, NOW, Garbage, garbage, matrix, vector  # noqa: F401

from controller.analysis import sequential as seq
from controller.analysis.prometheus import PrometheusProvider, QueryProblem
from controller.analysis.runner import AnalysisRequest, run_analysis
from controller.api.spec import MetricSpec, ProportionMetric
from controller.exporter.events import DecodeOptions, predicted_classes
from controller.exporter.server import PredictionExporter
from controller.redaction import without_userinfo
from controller.verdict import Outcome

NAMES = DecodeOptions(class_names=("safe", "nsfw"))
EV = 'sum(increase(p{ {{selector}}, c="nsfw"}[{{window}}]))'
TOT = "sum(increase(p{ {{selector}} }[{{window}}]))"


def _count(exporter, version, cls, variant=""):
    return exporter.metrics.registry.get_sample_value("modelrollout_predictions_total", {
        "namespace": "moderation", "inference_service": "nsfw", "variant": variant, "model_version": version,
        "class": cls})


# E1 (and E2): Seldon Core's request logger's event types are counted like KServe's.
def test_a_seldon_response_event_is_counted() -> None:
    exporter = PredictionExporter(NAMES)
    headers = {"Ce-Id": "s1", "Ce-Type": "io.seldon.serving.inference.response", "Ce-Specversion": "1.0",
               "Ce-Source": "seldon", "Ce-Namespace": "moderation", "Ce-Inferenceservicename": "nsfw",
               "Content-Type": "application/json"}
    body = json.dumps({"data": {"names": ["safe", "nsfw"], "ndarray": [[0.1, 0.9], [0.8, 0.2]]}}).encode()
    assert exporter.handle(headers, body, "model_version=7") == "counted"
    assert _count(exporter, "7", "nsfw") == 1 and _count(exporter, "7", "safe") == 1


# E31: a tie goes to the first class, as the gate's np.argmax reads it.
def test_a_tied_score_row_is_read_as_the_gate_reads_it() -> None:
    assert predicted_classes({"predictions": [[0.5, 0.5]]}, NAMES) == ("safe",)


# P33: two series where one number was expected are ambiguous, never the first one's value.
def test_two_series_are_ambiguous_not_the_first_ones_number(garbage: Garbage) -> None:  # noqa: F811
    series = [{"metric": {"class": c}, "value": [1, v]} for c, v in (("nsfw", "3"), ("safe", "900"))]
    garbage.answer(200, json.dumps({"status": "success", "data": {"resultType": "vector", "result": series}}).encode())
    m = PrometheusProvider(garbage.url, retries=0).scalar("sum by (class) (x)")
    assert m.problem is QueryProblem.AMBIGUOUS and "2 series returned" in m.detail, m


# P21: a dropped connection is tried again within the query's deadline, as a 503 is.
def test_a_dropped_connection_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    provider = PrometheusProvider("http://127.0.0.1:9", retries=1)
    tries = []

    def flaky(query, params=None):
        tries.append(query)
        if len(tries) == 1:
            raise requests.ConnectionError("connection reset by peer")
        return [{"metric": {}, "value": [1, "5"]}]

    monkeypatch.setattr(provider._client, "custom_query", flaky)
    m = provider.scalar("vector(5)", check_stale=False)
    assert m.ok and m.value == 5 and len(tries) == 2, m


# R25: the stable arm's freshness is checked too: a stable whose series stopped reporting is not judged.
def test_a_stable_arm_that_stopped_reporting_is_stale(garbage: Garbage) -> None:  # noqa: F811
    garbage.answer(200, vector(500))
    garbage.routes[("/api/v1/query", 'model_version!=""}[60s]')] = EMPTY_VECTOR  # stable's freshness check
    garbage.routes[("/api/v1/query", FRESHNESS)] = vector(2)  # canary's
    garbage.bodies["/api/v1/query_range"] = matrix(NOW - timedelta(seconds=90))
    request = AnalysisRequest("ns", "svc", "canary", NOW - timedelta(minutes=10), NOW, candidate_version="7")
    (v,) = run_analysis([MetricSpec("nsfw", ProportionMetric(events=EV, total=TOT))], request,
                        PrometheusProvider(garbage.url, retries=0))
    assert v.outcome is Outcome.INCONCLUSIVE and v.evidence.get("problem") == "StaleSeries", v.reason
    assert "the stable arm" in v.reason, v.reason


# R36: a history day Prometheus answered only in part is that problem (an outage), not a day without traffic.
def test_a_history_day_with_partial_data_is_partial_not_missing(garbage: Garbage) -> None:  # noqa: F811
    garbage.answer(200, vector(400))
    garbage.routes[("/api/v1/query", FRESHNESS)] = vector(2)
    garbage.routes[("/api/v1/query", '"6|unknown"')] = json.dumps({
        "status": "success", "warnings": ["remote read: store unavailable"],
        "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, "400"]}]}}).encode()
    request = AnalysisRequest("ns", "svc", "bake", NOW - timedelta(hours=1), NOW, baseline_window=timedelta(days=3),
                              candidate_version="7", baseline_version="6")
    (v,) = run_analysis([MetricSpec("nsfw", ProportionMetric(events=EV, total=TOT))], request,
                        PrometheusProvider(garbage.url, retries=0))
    assert v.outcome is Outcome.INCONCLUSIVE and v.evidence.get("problem") == "PartialData", (v.reason, v.evidence)


# RD5: a password holding an unencoded "@" leaves no part of itself in messages.
def test_a_password_with_an_at_sign_is_taken_out_whole() -> None:
    assert without_userinfo("http://ops:p@ss@prometheus:9090") == "http://prometheus:9090"


# V47: a body-read slot is given back after each large body (else the 9th large event on is lost as Busy).
def test_large_bodies_read_one_after_another_each_get_a_slot() -> None:
    exporter = PredictionExporter(NAMES, body_read_slots=1, body_wait_seconds=0.5)
    headers = {"Ce-Id": "x", "Ce-Type": "org.kubeflow.serving.inference.response", "Ce-Specversion": "1.0",
               "Ce-Namespace": "moderation", "Ce-Inferenceservicename": "nsfw", "Content-Type": "application/json"}
    body = json.dumps({"predictions": ["safe"], "pad": "x" * 70_000}).encode()

    async def post_three() -> list[int]:
        async with TestClient(TestServer(exporter.app(), host="127.0.0.1")) as client:
            out = []
            for i in range(3):
                response = await client.post("/?model_version=7", data=body, headers={**headers, "Ce-Id": f"x{i}"})
                out.append(response.status)
            return out

    assert asyncio.run(post_three()) == [202, 202, 202]


# V17: a new class at the series bound makes room by evicting idle identities, as a new identity does.
def test_a_new_class_at_the_series_bound_evicts_idle_identities() -> None:
    now = [0.0]
    exporter = PredictionExporter(DecodeOptions(), max_total_series=6, max_namespace_series=6,
                                  model_idle_seconds=10, clock=lambda: now[0])
    headers = {"Ce-Id": "e", "Ce-Type": "org.kubeflow.serving.inference.response", "Ce-Specversion": "1.0",
               "Ce-Namespace": "moderation", "Content-Type": "application/json"}

    def post(service: str, classes: list[str]) -> str:
        return exporter.handle({**headers, "Ce-Inferenceservicename": service},
                               json.dumps({"predictions": classes}).encode(), "model_version=1")

    assert post("idle", ["a"]) == "counted"
    assert post("busy", ["a", "b", "c"]) == "counted"  # 6 series (and each its unreadable series): the bound
    now[0] = 100.0  # "idle" has been silent for 100 s
    assert post("busy", ["d"]) == "counted"


# V35: an id sent again does not count its bytes twice (else the pending bound forgets every request).
def test_a_repeated_request_id_keeps_its_bytes_counted_once() -> None:
    exporter = PredictionExporter(NAMES, max_pending_bytes=2_000)
    request = {"Ce-Id": "r1", "Ce-Type": "org.kubeflow.serving.inference.request", "Ce-Specversion": "1.0",
               "Ce-Namespace": "moderation", "Ce-Inferenceservicename": "nsfw"}
    for _ in range(200):
        assert exporter.handle(request, b"", "") == "request"
    response = {"Ce-Id": "r1", "Ce-Type": "org.kubeflow.serving.inference.response", "Ce-Specversion": "1.0",
                "Content-Type": "application/json"}
    assert exporter.handle(response, json.dumps({"predictions": [1]}).encode(), "model_version=7") == "counted"


# S22: the calibrated boundary keeps its promise at a small null share too: an independent, unbanded programme.
@pytest.mark.parametrize("odds", [0.05, 0.2])
def test_the_calibrated_boundary_holds_at_small_odds(odds: float) -> None:
    alpha, prior = 0.01, seq.RELATIVE_PRIOR
    _, q = seq.quantize_odds(odds)
    q = float(q)
    log_b = seq.log_boundary(q, alpha, prior)
    theta0 = q / (1 + q)
    horizon = int(min(seq.CALIBRATION_MAX_EVENTS, math.ceil(seq.CALIBRATION_CANARY_EVENTS / theta0)))
    cap = 400  # far past any cut at these odds
    alive = np.zeros(cap + 1)
    alive[0] = 1.0
    crossed = 0.0
    xs = np.arange(cap + 1, dtype=np.float64)
    for k in range(1, horizon + 1):
        nxt = alive * (1 - theta0)
        nxt[1:] += alive[:-1] * theta0
        hit = (xs <= k) & (seq.log_evalue(xs, np.full_like(xs, k), q, prior) >= log_b)
        crossed += nxt[hit].sum()
        nxt[hit] = 0.0
        alive = nxt
    tail = (alive * np.exp(np.minimum(seq.log_evalue(xs, np.full_like(xs, horizon), q, prior) - log_b, 0))).sum()
    assert crossed + tail <= alpha * (1 + 1e-6), crossed + tail
