"""What the operator's own calls met at the API server is on /metrics and on the liveness endpoint (review s30runtime
LOW 2): during an outage /healthz said `{}` and no series moved but reconcile errors, which any rollout raises."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from controller.operator.kubeapi import API_FAILURE_KINDS, BoundedApiClient, api_failure_kind
from controller.operator.metrics import OperatorMetrics
from tests.http_stub import serving

SECRET = "s3cr3t-token-value"


class Answers(BaseHTTPRequestHandler):
    """/api/v1/namespaces/<status code>: answers that status (200: a namespace)."""

    def do_GET(self) -> None:
        code = int(self.path.rstrip("/").rsplit("/", 1)[-1])
        body = json.dumps({"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": "x"}} if code == 200 else
                          {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code}).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture()
def api_server() -> Iterator[str]:
    with serving(ThreadingHTTPServer(("127.0.0.1", 0), Answers)) as url:
        yield url


def closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def core(host: str, metrics: OperatorMetrics, timeout: tuple[float, float] = (2.0, 2.0)) -> client.CoreV1Api:
    configuration = client.Configuration()
    configuration.host = host
    configuration.retries = 0
    configuration.api_key = {"authorization": f"Bearer {SECRET}"}
    return client.CoreV1Api(BoundedApiClient(configuration, timeout=timeout, observer=metrics))


def sample(metrics: OperatorMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    assert value is not None, (name, labels)
    return value


def failures(metrics: OperatorMetrics) -> dict[str, float]:
    return {kind: sample(metrics, "modelrollout_kube_api_failures_total", kind=kind) for kind in API_FAILURE_KINDS}


def test_every_kind_is_exposed_at_zero_before_any_call() -> None:
    metrics = OperatorMetrics()
    assert failures(metrics) == dict.fromkeys(API_FAILURE_KINDS, 0.0)
    assert sample(metrics, "modelrollout_kube_api_last_success_timestamp_seconds") == 0.0
    assert metrics.kube_api_health() == {"lastSuccessAgeSeconds": None, "failuresSinceLastSuccess": 0,
                                         "lastFailure": None}


def test_an_answer_is_a_success_and_an_outage_is_counted_by_kind(api_server: str) -> None:
    metrics = OperatorMetrics()
    api = core(api_server, metrics)
    before = time.time()
    api.read_namespace("200")
    with pytest.raises(ApiException):
        api.read_namespace("404")  # the API server works: the object is not there
    last = sample(metrics, "modelrollout_kube_api_last_success_timestamp_seconds")
    assert before <= last <= time.time()
    assert failures(metrics) == dict.fromkeys(API_FAILURE_KINDS, 0.0)

    for code in (503, 500, 429, 401):
        with pytest.raises(ApiException):
            api.read_namespace(str(code))
    with pytest.raises(Exception):  # noqa: B017 (urllib3's MaxRetryError or the error itself)
        core(closed_port(), metrics).read_namespace("200")
    assert failures(metrics) == {**dict.fromkeys(API_FAILURE_KINDS, 0.0),
                                 "5xx": 2.0, "429": 1.0, "401": 1.0, "connect": 1.0}
    assert sample(metrics, "modelrollout_kube_api_last_success_timestamp_seconds") == last  # failures move it not

    health = metrics.kube_api_health(now=last + 90)
    assert health["lastSuccessAgeSeconds"] == 90.0
    assert health["failuresSinceLastSuccess"] == 5
    assert health["lastFailure"]["kind"] == "connect"
    assert SECRET not in json.dumps(health) and "127.0.0.1" not in json.dumps(health)

    api.read_namespace("200")  # back: the count since the last success starts again
    health = metrics.kube_api_health()
    assert health["failuresSinceLastSuccess"] == 0 and health["lastSuccessAgeSeconds"] < 5
    assert health["lastFailure"]["kind"] == "connect"  # still shown: what the last outage was


def test_a_server_that_never_answers_is_a_timeout() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        metrics = OperatorMetrics()
        with pytest.raises(Exception):  # noqa: B017
            core(f"http://127.0.0.1:{silent.getsockname()[1]}", metrics, timeout=(1.0, 0.5)).read_namespace("200")
    assert failures(metrics)["timeout"] == 1.0
    assert metrics.kube_api_health()["lastFailure"]["kind"] == "timeout"


@pytest.mark.parametrize(("exc", "kind"), [
    (ApiException(status=0, reason="SSLError\ncertificate verify failed"), "tls"),
    (ApiException(status=504), "5xx"),
    (ApiException(status=408), "timeout"),
    (ApiException(status=409), None),
    (ApiException(status=403), None),
    (ApiException(status=422), None),
    (ConnectionResetError(), "connect"),
    (TimeoutError(), "timeout"),
])
def test_failure_kinds(exc: BaseException, kind: str | None) -> None:
    assert api_failure_kind(exc) == kind
