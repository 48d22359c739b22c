"""What the Prometheus provider makes of answers real Prometheus never gives but a proxy, a wrong address or a
broken server can: each becomes an explained problem, never an exception. (Real Prometheus' own answers are
tested in tests/integration/test_exporter_prometheus.py and test_history_backfill.py.)"""

from __future__ import annotations

import base64
import itertools
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import pytest
import requests

from controller.analysis.prometheus import Measurement, PrometheusProvider, QueryProblem
from controller.analysis.runner import HISTORY_SPACING_SLACK, AnalysisRequest, run_analysis
from controller.api.spec import MetricSpec, ProportionMetric, ThresholdMetric
from controller.verdict import Outcome
from tests.http_stub import serving

# Real Prometheus stamps an instant answer with the evaluation time it was asked for (`time`), or with its own
# clock's when none was sent: where a fake's body holds ASKED_TIME, it is sent stamped so.
ASKED_TIME = b"ASKED_TIME"


def stamped(body: bytes, params: dict[str, str]) -> bytes:
    """`body` with ASKED_TIME replaced by the evaluation time `params` ask for (now when they ask for none)."""
    asked = params.get("time")
    return body.replace(ASKED_TIME, f"{float(asked) if asked else time.time():.3f}".encode())


class Garbage:
    """A local HTTP server that answers every request with the status and body it is set to (ASKED_TIME in it
    stamped with the evaluation time asked for)."""

    def __init__(self) -> None:
        self.status, self.body, self.requests = 200, b"", 0
        self.bodies: dict[str, bytes] = {}  # by path, e.g. /api/v1/query_range: instead of `body`
        self.routes: dict[tuple[str, str], bytes] = {}  # by path and a text the query holds: before `bodies`
        self.asked: list[dict[str, str]] = []  # each request's path and parameters
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                owner.requests += 1
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path, _, query = self.path.partition("?")
                params = {name: values[0] for name, values in parse_qs(query).items()}
                owner.asked.append({"path": path, **params})
                body = next((body for (where, text), body in owner.routes.items()
                             if where == path and text in params.get("query", "")),
                            owner.bodies.get(path, owner.body))
                body = stamped(body, params)
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
    with serving(g.server):
        yield g


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


@pytest.mark.parametrize("status", [400, 500])
def test_an_error_page_not_from_prometheus_says_so_and_names_the_server(garbage: Garbage, status: int) -> None:
    host = garbage.url.removeprefix("http://")
    garbage.answer(status, b"<html><body>Internal Server Error</body></html>")
    m = PrometheusProvider(f"http://admin:s3cret@{host}", retries=0).scalar("vector(1)")
    assert m.problem is QueryProblem.REJECTED, m
    assert m.detail == f"http://{host} answered HTTP {status}, not a Prometheus error (a proxy or another server?)"


def test_a_proxys_rate_limit_is_retried(garbage: Garbage) -> None:
    garbage.answer(429, b"slow down")
    m = PrometheusProvider(garbage.url, retries=2).scalar("vector(1)")
    assert m.problem is QueryProblem.UNREACHABLE and "HTTP 429 on every attempt" in m.detail, m
    assert garbage.requests == 3  # the first attempt and two retries


def test_a_true_promql_rejection_keeps_its_kind_and_explanation(garbage: Garbage) -> None:
    garbage.answer(400, b'{"status":"error","errorType":"bad_data","error":"parse error: unexpected end of input"}')
    m = PrometheusProvider(garbage.url, retries=2).scalar("sum(")
    assert m.problem is QueryProblem.REJECTED and garbage.requests == 1, m
    assert m.detail == "HTTP 400, Prometheus says bad_data: parse error: unexpected end of input"


# Prometheus busy (its own query timeout, its queue full) or not ready is a moment's outage, as a timeout of ours
# is (review s30judges): the same event must not be an outage or a verdict by whose timer fired first. Its words
# are kept; only the query itself (400 bad_data, 422 execution) is QueryRejected.
@pytest.mark.parametrize(("status", "error_type", "problem"), [
    (503, "timeout", QueryProblem.SLOW),
    (503, "unavailable", QueryProblem.UNREACHABLE),
    (504, "internal", QueryProblem.SLOW),
    (429, "error", QueryProblem.UNREACHABLE),
    (422, "execution", QueryProblem.REJECTED),
    (400, "bad_data", QueryProblem.REJECTED),
])
def test_prometheus_busy_is_an_outage_and_keeps_its_explanation(garbage: Garbage, status: int, error_type: str,
                                                                 problem: QueryProblem) -> None:
    body = {"status": "error", "errorType": error_type, "error": "query timed out in expression evaluation"}
    garbage.answer(status, json.dumps(body).encode())
    m = PrometheusProvider(garbage.url, retries=1).scalar("vector(1)")
    assert m.problem is problem, m
    assert f"HTTP {status}, Prometheus says {error_type}: query timed out in expression evaluation" in m.detail, m
    assert garbage.requests == (1 if problem is QueryProblem.REJECTED else 2), garbage.requests  # a busy one: retried


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


def test_credentials_a_server_echoes_in_an_error_never_reach_a_message(garbage: Garbage) -> None:
    host = garbage.url.removeprefix("http://")
    pair = base64.standard_b64encode(b"admin:s3cret").decode()
    in_address = PrometheusProvider(f"http://admin:s3cret@{host}", retries=0)
    in_header = PrometheusProvider(garbage.url, retries=0, headers={"Authorization": "Bearer tok-123"})
    for provider, echoes in ((in_address, (f"Basic {pair}", "s3cret")), (in_header, ("Bearer tok-123", "tok-123"))):
        for echoed in echoes:
            garbage.answer(400, json.dumps({"status": "error", "errorType": "bad_data",
                                            "error": f"you sent {echoed}"}).encode())
            m = provider.scalar("vector(1)")
            assert m.problem is QueryProblem.REJECTED and "Prometheus says bad_data: you sent" in m.detail
            assert m.detail.endswith("***") and not any(s in m.detail for s in ("s3cret", pair, "tok-123")), m.detail


def test_a_non_ascii_password_echoed_as_requests_sent_it_never_reaches_a_message(garbage: Garbage) -> None:
    """requests sends a basic-auth pair Latin-1 encoded (_basic_auth_str), not UTF-8: that base64 is redacted too."""
    host = garbage.url.removeprefix("http://")
    provider = PrometheusProvider(f"http://bob:p%C3%A4ss-PW@{host}", retries=0)
    sent = requests.auth._basic_auth_str("bob", "päss-PW")
    assert sent == "Basic " + base64.standard_b64encode("bob:päss-PW".encode("latin-1")).decode()
    garbage.answer(400, json.dumps({"status": "error", "errorType": "bad_data", "error": f"rejected {sent}"}).encode())
    m = provider.scalar("vector(1)", check_stale=False)
    assert m.problem is QueryProblem.REJECTED and m.detail.endswith("rejected Basic ***"), m.detail


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
    garbage.answer(200, vector(40))
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


VECTOR_ZERO = b'"data":{"resultType":"vector","result":[{"metric":{},"value":[' + ASKED_TIME + b',"0"]}]}'


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


def vector(value: float) -> bytes:
    """One number, stamped (by the fake serving it) with the evaluation time asked for, as Prometheus does."""
    return b'{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[%s,"%s"]}]}}' % (
        ASKED_TIME, repr(value).encode())


EMPTY_VECTOR = b'{"status":"success","data":{"resultType":"vector","result":[]}}'
FRESHNESS = "count(last_over_time("
NOW = datetime(2026, 1, 1, 0, 10, tzinfo=UTC)


def matrix(*times: datetime) -> bytes:
    values = ",".join(f'[{t.timestamp()}, "2"]' for t in times)
    return b'{"status":"success","data":{"resultType":"matrix","result":[%s]}}' % (
        b'{"metric":{},"values":[%s]}' % values.encode() if times else b"")


@pytest.mark.parametrize(("last", "detail"), [
    (NOW - timedelta(seconds=480), "480 s or more earlier"),
    (None, "none in the 3600 s before"),
])
def test_a_count_whose_source_stopped_reporting_is_stale_not_a_pass(garbage: Garbage, last: datetime | None,
                                                                    detail: str) -> None:
    """increase() keeps answering from the first minutes of the window after the exporter went away."""
    garbage.answer(200, vector(400))
    garbage.routes[("/api/v1/query", 'c="nsfw"')] = vector(4)
    garbage.routes[("/api/v1/query", FRESHNESS)] = EMPTY_VECTOR
    garbage.routes[("/api/v1/query_range", FRESHNESS)] = matrix(*([last - timedelta(seconds=30), last] if last else []))
    metric = MetricSpec("nsfw", ProportionMetric(events='sum(increase(p{ {{selector}}, c="nsfw"}[{{window}}]))',
                                                 total="sum(increase(p{ {{selector}} }[{{window}}]))"))
    request = AnalysisRequest("ns", "svc", "canary", NOW - timedelta(minutes=10), NOW, candidate_version="7")
    (verdict,) = run_analysis([metric], request, PrometheusProvider(garbage.url, retries=0))
    assert verdict.outcome is Outcome.INCONCLUSIVE, verdict
    assert "StaleSeries" in verdict.reason and "the canary arm" in verdict.reason and detail in verdict.reason
    assert "no sample within 60s (twice the assumed scrape interval of 30s)" in verdict.reason
    assert verdict.evidence["failedQuery"] == verdict.evidence["queries"]["canary_freshness"]
    assert verdict.evidence["failedQuery"] == ('count(last_over_time({namespace="ns", inference_service="svc", '
                                               'model_version="7", __name__!~"ALERTS|ALERTS_FOR_STATE|.*:.*"}[60s]))')
    range_query = next(a for a in garbage.asked if a["path"] == "/api/v1/query_range")
    assert range_query["step"] == "30s" and float(range_query["end"]) == NOW.timestamp()


@pytest.mark.parametrize("fresh", [True, False])
def test_a_fresh_series_at_zero_is_judged_and_a_silent_one_is_not(garbage: Garbage, fresh: bool) -> None:
    """The exporter creates series at zero: no traffic on a fresh series is a 0, not missing evidence."""
    garbage.answer(200, vector(0))
    garbage.routes[("/api/v1/query", FRESHNESS)] = vector(3) if fresh else EMPTY_VECTOR
    garbage.routes[("/api/v1/query", "sum(increase(modelrollout_predictions_total{")] = vector(5)  # the canary served
    garbage.bodies["/api/v1/query_range"] = matrix(NOW - timedelta(seconds=90))
    metric = MetricSpec("errors", threshold=ThresholdMetric("sum(increase(e{ {{selector}} }[{{window}}]))", max=0))
    request = AnalysisRequest("ns", "svc", "canary", NOW - timedelta(minutes=10), NOW, candidate_version="7")
    (verdict,) = run_analysis([metric], request, PrometheusProvider(garbage.url, retries=0))
    assert verdict.outcome is (Outcome.PASS if fresh else Outcome.INCONCLUSIVE), verdict
    window = verdict.evidence["window"]
    assert window["freshWithin"] == "60s (twice the assumed scrape interval of 30s)"
    assert window["freshSeries"] == ({"canary": 3} if fresh else {})
    if not fresh:
        assert "StaleSeries" in verdict.reason and "90 s or more earlier" in verdict.reason


@pytest.mark.parametrize(("count", "problem", "detail"), [
    (0, "StaleSeries", "90 s or more earlier"),
    (-1, "MalformedResponse", "answered the count of fresh series with -1, not a whole number"),
    (0.5, "MalformedResponse", "answered the count of fresh series with 0.5, not a whole number"),
])
def test_a_freshness_count_below_one_series_is_not_fresh(garbage: Garbage, count: float, problem: str,
                                                         detail: str) -> None:
    """Only an empty answer was stale: a proxy's (or an `or vector(0)`'s) 0 passed on missing evidence."""
    garbage.answer(200, vector(0))
    garbage.routes[("/api/v1/query", FRESHNESS)] = vector(count)
    garbage.bodies["/api/v1/query_range"] = matrix(NOW - timedelta(seconds=90))
    metric = MetricSpec("errors", threshold=ThresholdMetric("sum(increase(e{ {{selector}} }[{{window}}]))", max=0))
    request = AnalysisRequest("ns", "svc", "canary", NOW - timedelta(minutes=10), NOW, candidate_version="7")
    (verdict,) = run_analysis([metric], request, PrometheusProvider(garbage.url, retries=0))
    assert verdict.outcome is Outcome.INCONCLUSIVE, verdict
    assert verdict.reason.startswith(f"{problem}: the canary arm") and detail in verdict.reason, verdict.reason
    assert verdict.evidence["window"]["freshSeries"] == {}


def test_the_assumed_scrape_interval_can_be_told(garbage: Garbage) -> None:
    garbage.answer(200, vector(1))
    metric = MetricSpec("errors", threshold=ThresholdMetric("sum(increase(e{ {{selector}} }[{{window}}]))", max=1))
    request = AnalysisRequest("ns", "svc", "canary", NOW - timedelta(minutes=10), NOW, candidate_version="7")
    provider = PrometheusProvider(garbage.url, retries=0, scrape_interval=timedelta(seconds=2))
    (verdict,) = run_analysis([metric], request, provider)
    assert verdict.evidence["window"]["freshWithin"] == "4s (twice the assumed scrape interval of 2s)"
    assert next(a["query"] for a in garbage.asked if FRESHNESS in a["query"]).endswith("[4s]))")


def test_a_template_without_selector_is_not_checked_for_freshness(garbage: Garbage) -> None:
    """Its series are not the arm's selector's: a check on those could only refuse a good metric."""
    garbage.answer(200, vector(0))
    metric = MetricSpec("errors", threshold=ThresholdMetric("sum(increase(e[{{window}}]))", max=0))
    request = AnalysisRequest("ns", "svc", "canary", NOW - timedelta(minutes=10), NOW, candidate_version="7")
    (verdict,) = run_analysis([metric], request, PrometheusProvider(garbage.url, retries=0))
    assert verdict.outcome is Outcome.PASS and garbage.requests == 1


BAKE_METRIC = MetricSpec("nsfw", ProportionMetric(events='sum(increase(p{ {{selector}}, c="nsfw"}[{{window}}]))',
                                                  total="sum(increase(p{ {{selector}} }[{{window}}]))"))


def test_a_bake_whose_source_stopped_reporting_is_stale(garbage: Garbage) -> None:
    garbage.answer(200, vector(40))
    garbage.routes[("/api/v1/query", FRESHNESS)] = EMPTY_VECTOR
    garbage.bodies["/api/v1/query_range"] = matrix()
    request = AnalysisRequest("ns", "svc", "bake", NOW - timedelta(hours=3), NOW, baseline_window=timedelta(days=3),
                              candidate_version="7", baseline_version="6")
    (verdict,) = run_analysis([BAKE_METRIC], request, PrometheusProvider(garbage.url, retries=0))
    assert verdict.outcome is Outcome.INCONCLUSIVE and "StaleSeries" in verdict.reason, verdict
    assert "the current arm" in verdict.reason and 'model_version="7"' in verdict.evidence["failedQuery"]


@pytest.mark.parametrize(("bake", "every"), [(timedelta(hours=1), 1), (timedelta(hours=24), 1),
                                             (timedelta(hours=24, seconds=1), 1), (timedelta(hours=25), 1),
                                             (timedelta(hours=25, seconds=1), 2), (timedelta(hours=72), 3)])
def test_bake_history_windows_overlap_by_at_most_the_slack(garbage: Garbage, bake: timedelta, every: int) -> None:
    """A 72h bake read a day apart would count each past hour up to three times, the nearest ones the bake's own;
    a 24h bake's deciding run, measured a moment after it ends, still reads its history a day apart."""
    garbage.answer(200, vector(40))
    garbage.routes[("/api/v1/query", FRESHNESS)] = vector(2)
    request = AnalysisRequest("ns", "svc", "bake", NOW - bake, NOW, baseline_window=timedelta(days=3),
                              candidate_version="7", baseline_version="6")
    (verdict,) = run_analysis([BAKE_METRIC], request, PrometheusProvider(garbage.url, retries=0))
    ends = [NOW - timedelta(days=every * day) for day in (1, 2, 3)]
    # The days' counts (their copies are counted up to the promotion: a 24 h bake's nearest day ends after it).
    history = [float(a["time"]) for a in garbage.asked if '"6|unknown"' in a["query"] and "increase(" in a["query"]]
    assert sorted(set(history), reverse=True) == [end.timestamp() for end in ends]
    slack = HISTORY_SPACING_SLACK
    assert ends[0] <= request.window_start + slack and all(b <= a - bake + slack for a, b in itertools.pairwise(ends))
    assert verdict.evidence["window"]["historyAt"] == [end.isoformat() for end in ends]
    assert verdict.evidence["window"]["historyEveryDays"] == every


def test_a_bake_keeps_every_history_day_in_step_with_history_at(garbage: Garbage) -> None:
    """A day without traffic stays in evidence.history, marked, so its entries line up with window.historyAt."""
    garbage.answer(200, vector(40))
    garbage.routes[("/api/v1/query", FRESHNESS)] = vector(2)
    garbage.routes[("/api/v1/query", '"6|unknown"')] = EMPTY_VECTOR  # no traffic on any past day
    request = AnalysisRequest("ns", "svc", "bake", NOW - timedelta(hours=3), NOW, baseline_window=timedelta(days=3),
                              candidate_version="7", baseline_version="6")
    (verdict,) = run_analysis([BAKE_METRIC], request, PrometheusProvider(garbage.url, retries=0))
    assert verdict.outcome is Outcome.INCONCLUSIVE and "only 0 day(s) of history" in verdict.reason, verdict
    history = verdict.evidence["history"]
    assert [day["at"] for day in history] == verdict.evidence["window"]["historyAt"]
    assert all(day["no_traffic"] and day["total"] == 0 and day["rate"] is None for day in history), history


TOKEN = "tok-" + "a1b2c3d4" * 8  # longer than the 40 characters a message quotes


@pytest.mark.parametrize("body", [
    b'{"status": "Bearer %s"}' % TOKEN.encode(),
    b'{"status": "success", "data": {"resultType": "Bearer %s", "result": []}}' % TOKEN.encode(),
])
def test_a_status_or_result_type_echoing_the_authorization_header_is_redacted(garbage: Garbage, body: bytes) -> None:
    """Redacted before it is cut: a token cut at 40 characters would no longer be found whole."""
    garbage.answer(200, body)
    m = PrometheusProvider(garbage.url, retries=0, headers={"Authorization": f"Bearer {TOKEN}"}).scalar("x")
    assert m.problem in (QueryProblem.REJECTED, QueryProblem.MALFORMED) and "***" in m.detail, m
    assert TOKEN[:12] not in m.detail, m.detail


def test_several_series_are_named_briefly_and_redacted(garbage: Garbage) -> None:
    """Their label sets can be any size: the verdict reaches a status, which etcd caps."""
    series = [{"metric": {"auth": f"Bearer {TOKEN}", "pod": f"{i}" + "x" * 100_000}, "value": [1, "1"]}
              for i in range(3)]
    garbage.answer(200, json.dumps({"status": "success", "data": {"resultType": "vector", "result": series}}).encode())
    m = PrometheusProvider(garbage.url, retries=0, headers={"Authorization": f"Bearer {TOKEN}"}).scalar("x")
    assert m.problem is QueryProblem.AMBIGUOUS and "3 series returned" in m.detail and "'pod'" in m.detail, m
    assert len(m.detail) < 500 and "'auth': '***'" in m.detail and TOKEN[:12] not in m.detail, m.detail


@pytest.mark.parametrize("shape", ["warning", "error"])
def test_a_credential_echoed_across_the_cut_is_redacted_whole(garbage: Garbage, shape: str) -> None:
    """Redacted before it is cut: a message cut 12 characters into the echoed credential kept those 12."""
    host = garbage.url.removeprefix("http://")
    pair = base64.standard_b64encode(b"ops:Sup3r-Secret-Prometheus-Pa55word").decode()
    said = "request header Authorization: Basic "
    echo = "p" * (300 - len(said) - 12) + said + pair
    assert echo.index(pair) == 300 - 12
    if shape == "warning":
        garbage.answer(200, json.dumps({"status": "success", "warnings": [echo],
                                        "data": {"resultType": "vector", "result": []}}).encode())
    else:
        garbage.answer(422, json.dumps({"status": "error", "errorType": "bad_data", "error": echo}).encode())
    m = PrometheusProvider(f"http://ops:Sup3r-Secret-Prometheus-Pa55word@{host}", retries=0).scalar("x")
    assert m.problem in (QueryProblem.PARTIAL, QueryProblem.REJECTED) and "request header Authorization" in m.detail, m
    assert pair[:8] not in m.detail and "Sup3r" not in m.detail, m.detail
    assert len(m.detail) < 400, m.detail
