"""What the Prometheus provider makes of answers real Prometheus never gives but a proxy, a wrong address or a
broken server can: each becomes an explained problem, never an exception. (Real Prometheus' own answers are
tested in tests/integration/test_exporter_prometheus.py and test_history_backfill.py.)"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from controller.analysis.prometheus import Measurement, PrometheusProvider, QueryProblem
from controller.analysis.runner import AnalysisRequest, run_analysis
from controller.api.spec import MetricSpec, ProportionMetric
from controller.verdict import Outcome


class Garbage:
    """A local HTTP server that answers every request with the status and body it is set to."""

    def __init__(self) -> None:
        self.status, self.body, self.requests = 200, b"", 0
        self.bodies: dict[str, bytes] = {}  # by path, e.g. /api/v1/query_range: instead of `body`
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                owner.requests += 1
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = owner.bodies.get(self.path.split("?")[0], owner.body)
                self.send_response(owner.status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def answer(self, status: int, body: bytes) -> None:
        self.status, self.body = status, body


@pytest.fixture()
def garbage() -> Iterator[Garbage]:
    g = Garbage()
    thread = threading.Thread(target=g.server.serve_forever, daemon=True)
    thread.start()
    yield g
    g.server.shutdown()
    g.server.server_close()


@pytest.mark.parametrize(("body", "detail"), [
    (b"[]", "without data.result"),
    (b'{"status": "success"}', "without data.result"),
    (b'{"data": null}', "without Prometheus' status"),
    (b'{"data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, "0"]}]}}',
     "without Prometheus' status"),
    (b"[" * 100_000, "nested too deep"),
    (b"<html>hello</html>", "not with JSON"),
])
def test_a_200_that_is_not_a_prometheus_answer_is_malformed(garbage: Garbage, body: bytes, detail: str) -> None:
    garbage.answer(200, body)
    m = PrometheusProvider(garbage.url, retries=0).scalar("vector(1)")
    assert m.problem is QueryProblem.MALFORMED and detail in m.detail, m


def test_a_proxy_without_a_backend_is_unreachable_after_the_retries(garbage: Garbage) -> None:
    garbage.answer(503, b"no healthy upstream")
    m = PrometheusProvider(garbage.url, retries=2).scalar("vector(1)")
    assert m.problem is QueryProblem.UNREACHABLE and "HTTP 503 on every attempt" in m.detail, m
    assert garbage.requests == 3  # the first attempt and two retries


def test_another_servers_error_page_is_not_read_back(garbage: Garbage) -> None:
    garbage.answer(400, b"internal-only: db_password=hunter2")
    m = PrometheusProvider(garbage.url, retries=0).scalar("vector(1)")
    assert m.problem is QueryProblem.REJECTED and "hunter2" not in m.detail and "HTTP 400" in m.detail, m


def test_prometheus_own_timeout_keeps_its_explanation(garbage: Garbage) -> None:
    garbage.answer(503, b'{"status":"error","errorType":"timeout","error":"query timed out in expression evaluation"}')
    m = PrometheusProvider(garbage.url, retries=1).scalar("vector(1)")
    assert m.problem is QueryProblem.REJECTED and "query timed out" in m.detail, m


def test_a_scalar_result_is_one_number(garbage: Garbage) -> None:
    garbage.answer(200, b'{"status":"success","data":{"resultType":"scalar","result":[1700000000.5,"0.25"]}}')
    assert PrometheusProvider(garbage.url, retries=0).scalar("scalar(x)").value == 0.25


def test_credentials_in_the_address_never_reach_a_message(garbage: Garbage) -> None:
    host = garbage.url.removeprefix("http://")
    garbage.answer(503, b"down")
    provider = PrometheusProvider(f"http://admin:s3cret@{host}", retries=0)
    m = provider.scalar("vector(1)")
    assert m.problem is QueryProblem.UNREACHABLE
    assert "s3cret" not in m.detail and "admin" not in m.detail and "s3cret" not in repr(provider)
    assert host in m.detail


def test_an_address_that_cannot_be_asked_is_unreachable_not_a_malformed_answer() -> None:
    m = PrometheusProvider("http://a..b:9090", retries=0).scalar("vector(1)")
    assert m.problem is QueryProblem.UNREACHABLE and "not a usable address" in m.detail


def test_an_empty_answer_with_no_history_is_no_data(garbage: Garbage) -> None:
    garbage.answer(200, b'{"status":"success","data":{"resultType":"vector","result":[]}}')
    garbage.bodies["/api/v1/query_range"] = b'{"status":"success","data":{"resultType":"matrix","result":[]}}'
    m = PrometheusProvider(garbage.url, retries=0).scalar("x", datetime(2026, 1, 1, tzinfo=UTC))
    assert m.problem is QueryProblem.EMPTY
    assert garbage.requests == 2  # the instant query, then the range query that looks for a stale series


def test_canary_analysis_stops_asking_once_a_query_fails(garbage: Garbage) -> None:
    garbage.answer(503, b"down")
    metric = MetricSpec("nsfw-rate", ProportionMetric(events='sum(increase(p{ {{selector}}, c="nsfw"}[{{window}}]))',
                                                      total="sum(increase(p{ {{selector}} }[{{window}}]))"))
    now = datetime(2026, 1, 1, tzinfo=UTC)
    request = AnalysisRequest("ns", "model", "canary", now.replace(hour=0, minute=0), now.replace(minute=5))
    (verdict,) = run_analysis([metric], request, PrometheusProvider(garbage.url, retries=0))
    assert verdict.outcome is Outcome.INCONCLUSIVE and "PrometheusUnreachable" in verdict.reason
    assert garbage.requests == 1  # not four


def test_queries_that_cannot_tell_canary_from_stable_are_inconclusive_not_a_pass(garbage: Garbage) -> None:
    # Both would answer the same number, so the canary would be judged against itself and pass.
    garbage.answer(200, b'{"status": "success", "data": {"resultType": "vector", "result": '
                        b'[{"metric": {}, "value": [1767225900, "500"]}]}}')
    metric = MetricSpec("nsfw-rate", ProportionMetric(events='sum(increase(p{c="nsfw"}[{{window}}]))',
                                                      total="sum(increase(p[{{window}}]))"))
    now = datetime(2026, 1, 1, tzinfo=UTC)
    request = AnalysisRequest("ns", "model", "canary", now.replace(hour=0, minute=0), now.replace(minute=5),
                              candidate_version="7")
    (verdict,) = run_analysis([metric], request, PrometheusProvider(garbage.url, retries=0))
    assert verdict.outcome is Outcome.INCONCLUSIVE and "identical" in verdict.reason
    assert garbage.requests == 0
    assert verdict.evidence["window"]["range"] == "300s" and verdict.evidence["queries"]


def test_the_bake_reads_the_promoted_version_against_the_previous_versions_history(garbage: Garbage) -> None:
    """Not every other version's: a canary rejected on one of the past days is not the reference."""
    garbage.answer(200, b'{"status":"success","data":{"resultType":"vector","result":[{"metric":{},'
                        b'"value":[1767225600,"40"]}]}}')
    metric = MetricSpec("nsfw-rate", ProportionMetric(events='sum(increase(p{ {{selector}}, c="nsfw"}[{{window}}]))',
                                                      total="sum(increase(p{ {{selector}} }[{{window}}]))"))
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    request = AnalysisRequest("ns", "model", "bake", now.replace(hour=11), now, baseline_window=timedelta(days=3),
                              candidate_version="7", baseline_version="6")
    (verdict,) = run_analysis([metric], request, PrometheusProvider(garbage.url, retries=0))
    queries = verdict.evidence["queries"]
    assert 'model_version="7"' in queries["current_events"] and 'model_version="7"' in queries["current_total"]
    assert 'model_version=~"6|unknown"' in queries["history_events"]
    assert 'model_version=~"6|unknown"' in queries["history_total"]


@pytest.mark.parametrize("result", [
    b'[{"metric": {}, "value": [1, false]}]',  # a boolean read as 0 would pass a maximum
    b'[{"metric": {}, "value": [1, 0.5]}]',  # Prometheus sends values as strings
    b'{"metric": {}, "value": [1, "0"]}',  # one series, not in a vector
    b'[{"metric": {}, "value": [1, "0", "extra"]}]',
    b'["0"]',
])
def test_a_sample_not_shaped_like_prometheus_is_malformed_not_a_number(garbage: Garbage, result: bytes) -> None:
    garbage.answer(200, b'{"status":"success","data":{"resultType":"vector","result":' + result + b"}}")
    m = PrometheusProvider(garbage.url, retries=0).scalar("x")
    assert m.problem is QueryProblem.MALFORMED and m.value is None, m


def test_an_answer_that_says_it_failed_is_not_read_as_data(garbage: Garbage) -> None:
    garbage.answer(200, b'{"status":"error","errorType":"timeout","error":"query timed out",'
                        b'"data":{"resultType":"vector","result":[{"metric":{},"value":[1,"0"]}]}}')
    m = PrometheusProvider(garbage.url, retries=0).scalar("x")
    assert m.problem is QueryProblem.REJECTED and "'error'" in m.detail and m.value is None, m


def test_a_malformed_range_answer_is_malformed_not_no_data(garbage: Garbage) -> None:
    garbage.answer(200, b'{"status":"success","data":{"resultType":"vector","result":[]}}')
    garbage.bodies["/api/v1/query_range"] = b'{"status":"success","data":{"resultType":"matrix","result":"zzz"}}'
    m = PrometheusProvider(garbage.url, retries=0).scalar("x", datetime(2026, 1, 1, tzinfo=UTC))
    assert m.problem is QueryProblem.MALFORMED and "range query" in m.detail, m


@pytest.mark.parametrize("password", ["s3cr#t", "s3/cret", "s3?cret", "s3@cr:et"])
def test_a_password_the_url_parser_splits_early_never_reaches_a_message(garbage: Garbage, password: str) -> None:
    host = garbage.url.removeprefix("http://")
    garbage.answer(503, b"down")
    provider = PrometheusProvider(f"http://admin:{password}@{host}", retries=0)
    m = provider.scalar("vector(1)")
    assert not m.ok
    for secret in (password, "admin"):
        assert secret not in m.detail and secret not in repr(provider), (m.detail, repr(provider))


def test_an_unexpected_failure_is_an_inconclusive_verdict_that_shows_only_its_type(garbage: Garbage) -> None:
    class Exploding(PrometheusProvider):
        def scalar(self, *_: object, **__: object) -> Measurement:
            raise RuntimeError("http://admin:s3cret@prometheus:9090 blew up")

    now = datetime(2026, 1, 1, tzinfo=UTC)
    metric = MetricSpec("nsfw", ProportionMetric(events="sum(e{{selector}})", total="sum(t{{selector}})"))
    request = AnalysisRequest("ns", "svc", "canary", now - timedelta(minutes=5), now, candidate_version="2")
    (verdict,) = run_analysis([metric], request, Exploding(garbage.url))
    assert verdict.outcome is Outcome.INCONCLUSIVE and "RuntimeError" in verdict.reason
    assert "s3cret" not in verdict.reason and "s3cret" not in str(verdict.evidence)
    assert verdict.evidence["window"]["range"] == "300s"


def test_a_failed_query_verdict_carries_its_window(garbage: Garbage) -> None:
    garbage.answer(503, b"down")
    now = datetime(2026, 1, 1, tzinfo=UTC)
    metric = MetricSpec("nsfw", ProportionMetric(events="sum(e{{selector}})", total="sum(t{{selector}})"))
    request = AnalysisRequest("ns", "svc", "canary", now - timedelta(minutes=5), now, candidate_version="2")
    (verdict,) = run_analysis([metric], request, PrometheusProvider(garbage.url, retries=0))
    assert verdict.outcome is Outcome.INCONCLUSIVE
    assert verdict.evidence["window"] == {"start": (now - timedelta(minutes=5)).isoformat(), "end": now.isoformat(),
                                          "range": "300s", "mode": "canary"}


VECTOR_ZERO = b'"data":{"resultType":"vector","result":[{"metric":{},"value":[1767225600,"0"]}]}'


@pytest.mark.parametrize(("extra", "text"), [
    (b'"warnings":["remote store unreachable:\\n results may be incomplete"]',
     "remote store unreachable: results may be incomplete"),
    (b'"partialResponse":true,"warnings":["store eu-1 down"]', "store eu-1 down"),  # Thanos
    (b'"partialResponse":true', "partialResponse is true"),
    (b'"warnings":["PromQL info: metric might not be a counter","' + b"x" * 5000 + b'"]', "xxx"),
])
def test_an_answer_that_warns_of_missing_data_is_partial_not_a_number(garbage: Garbage, extra: bytes,
                                                                       text: str) -> None:
    # A 0 read from what a failed store left out would pass any maximum.
    garbage.answer(200, b'{"status":"success",' + extra + b"," + VECTOR_ZERO + b"}")
    m = PrometheusProvider(garbage.url, retries=0).scalar("x")
    assert m.problem is QueryProblem.PARTIAL and m.value is None and text in m.detail, m
    assert "\n" not in m.detail and len(m.detail) < 400 and "PromQL info" not in m.detail, m


def test_a_range_answer_that_warns_of_missing_data_is_partial_not_no_data(garbage: Garbage) -> None:
    garbage.answer(200, b'{"status":"success","data":{"resultType":"vector","result":[]}}')
    garbage.bodies["/api/v1/query_range"] = (b'{"status":"success","warnings":["store eu-1 down"],'
                                             b'"data":{"resultType":"matrix","result":[]}}')
    m = PrometheusProvider(garbage.url, retries=0).scalar("x", datetime(2026, 1, 1, tzinfo=UTC))
    assert m.problem is QueryProblem.PARTIAL and "store eu-1 down" in m.detail, m


@pytest.mark.parametrize("extra", [
    b'"infos":["PromQL info: metric might not be a counter, name does not end in _total"]',  # Prometheus >= 2.50
    b'"warnings":["PromQL info: metric might not be a counter, name does not end in _total"]',  # older, Thanos
    b'"warnings":[],"partialResponse":false',
])
def test_info_annotations_are_not_missing_data(garbage: Garbage, extra: bytes) -> None:
    garbage.answer(200, b'{"status":"success",' + extra + b"," + VECTOR_ZERO + b"}")
    assert PrometheusProvider(garbage.url, retries=0).scalar("x").value == 0


def test_a_canary_on_partial_data_is_inconclusive_with_the_warning_and_the_query(garbage: Garbage) -> None:
    garbage.answer(200, b'{"status":"success","warnings":["remote store unreachable"],' + VECTOR_ZERO + b"}")
    metric = MetricSpec("nsfw", ProportionMetric(events="sum(e{{selector}})", total="sum(t{{selector}})"))
    now = datetime(2026, 1, 1, tzinfo=UTC)
    request = AnalysisRequest("ns", "svc", "canary", now - timedelta(minutes=5), now, candidate_version="2")
    (verdict,) = run_analysis([metric], request, PrometheusProvider(garbage.url, retries=0))
    assert verdict.outcome is Outcome.INCONCLUSIVE and "PartialData" in verdict.reason
    assert verdict.evidence["problem"] == "PartialData" and "remote store unreachable" in verdict.evidence["detail"]
    assert verdict.evidence["failedQuery"] == verdict.evidence["queries"]["canary_events"]


@pytest.mark.parametrize("time", [b"NaN", b"Infinity", b"-Infinity", b"1e20", b"-1e20"])
def test_a_range_answer_whose_sample_time_is_not_a_time_is_malformed(garbage: Garbage, time: bytes) -> None:
    garbage.answer(200, b'{"status":"success","data":{"resultType":"vector","result":[]}}')
    garbage.bodies["/api/v1/query_range"] = (b'{"status":"success","data":{"resultType":"matrix","result":'
                                             b'[{"metric":{},"values":[[1767225600,"1"],[' + time + b',"1"]]}]}}')
    m = PrometheusProvider(garbage.url, retries=0).scalar("x", datetime(2026, 1, 1, tzinfo=UTC))
    assert m.problem is QueryProblem.MALFORMED and "not a time" in m.detail, m


@pytest.mark.parametrize(("path", "data"), [
    ("/api/v1/query", b'{"resultType":"string","result":[1767225600,"0.5"]}'),
    ("/api/v1/query", b'{"resultType":"matrix","result":[{"metric":{},"values":[[1767225600,"1"]]}]}'),
    ("/api/v1/query_range", b'{"resultType":"vector","result":[{"metric":{},"value":[1767225600,"1"]}]}'),
])
def test_a_result_type_the_query_does_not_answer_with_is_malformed(garbage: Garbage, path: str, data: bytes) -> None:
    garbage.answer(200, b'{"status":"success","data":{"resultType":"vector","result":[]}}')
    garbage.bodies[path] = b'{"status":"success","data":' + data + b"}"
    m = PrometheusProvider(garbage.url, retries=0).scalar("x", datetime(2026, 1, 1, tzinfo=UTC))
    assert m.problem is QueryProblem.MALFORMED and "result type" in m.detail, m


def test_a_refused_template_verdict_shows_the_templates(garbage: Garbage) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    metric = MetricSpec("nsfw", ProportionMetric(events="sum(e{{nope}})", total="sum(t{{selector}})"))
    request = AnalysisRequest("ns", "svc", "canary", now - timedelta(minutes=5), now, candidate_version="2")
    (verdict,) = run_analysis([metric], request, PrometheusProvider(garbage.url, retries=0))
    assert verdict.outcome is Outcome.INCONCLUSIVE and "template" in verdict.reason
    assert verdict.evidence["queries"] == {"events": "sum(e{{nope}})", "total": "sum(t{{selector}})"}
    assert verdict.evidence["window"]["range"] == "300s" and garbage.requests == 0
