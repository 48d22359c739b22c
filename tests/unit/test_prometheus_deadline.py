"""How long one query, and one measurement, may hold a queue worker: a Prometheus address is the rollout's, and a
server that asks for hours (Retry-After), trickles its answer or sends a flood must cost seconds, not hours."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from controller.analysis.prometheus import PrometheusProvider, QueryProblem
from controller.analysis.runner import AnalysisRequest, run_analysis
from controller.api.spec import MetricSpec, ProportionMetric
from controller.verdict import Outcome
from tests.http_stub import serving

NOW = datetime(2026, 1, 1, 0, 10, tzinfo=UTC)
ONE = json.dumps({"status": "success", "data": {"resultType": "vector",
                                                "result": [{"metric": {}, "value": [1, "1"]}]}}).encode()
METRIC = MetricSpec("nsfw", ProportionMetric(events='sum(increase(p{ {{selector}}, c="nsfw"}[{{window}}]))',
                                             total="sum(increase(p{ {{selector}} }[{{window}}]))"))
REQUEST = AnalysisRequest("ns", "svc", "canary", NOW - timedelta(minutes=10), NOW, candidate_version="7")


class Stub:
    """Answers every POST with `status`, `headers` and `body`, after `delay` seconds; counts the requests."""

    def __init__(self) -> None:
        self.status, self.headers, self.body, self.delay, self.requests = 200, {}, ONE, 0.0, 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                owner.requests += 1
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                time.sleep(owner.delay)
                self.send_response(owner.status)
                for name, value in owner.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(owner.body)))
                self.end_headers()
                self.wfile.write(owner.body)

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)


@pytest.fixture()
def stub() -> Iterator[tuple[Stub, str]]:
    s = Stub()
    with serving(s.server) as url:
        yield s, url


@pytest.fixture()
def trickle() -> Iterator[str]:
    """A server that sends a correct answer's headers at once and its body a byte every 0.1 s (about 10 s in all):
    each wait for bytes is short, so requests' timeout never fires."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def handle(conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(ONE))
            for i in range(len(ONE)):
                if stop.is_set():
                    return
                try:
                    conn.sendall(ONE[i:i + 1])
                except OSError:  # the client gave up: what the test wants
                    return
                time.sleep(0.1)

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        listener.close()


@pytest.mark.parametrize("status", [503, 429])
def test_retry_after_is_not_slept(stub: tuple[Stub, str], status: int) -> None:
    """urllib3 would sleep what the server says (up to 6 h) before each retry."""
    server, url = stub
    server.status, server.headers = status, {"Retry-After": "3"}
    started = time.monotonic()
    m = PrometheusProvider(url, retries=1).scalar("x", NOW, check_stale=False)
    assert time.monotonic() - started < 2, m
    assert not m.ok


def test_an_answer_trickled_past_the_query_deadline_is_too_slow(trickle: str) -> None:
    started = time.monotonic()
    m = PrometheusProvider(trickle, timeout_seconds=0.3, retries=0).scalar("x", NOW, check_stale=False)
    assert time.monotonic() - started < 3, m
    assert m.problem is QueryProblem.SLOW and "too slow" in m.detail, m


def test_an_answer_past_the_size_limit_is_not_read_whole(stub: tuple[Stub, str]) -> None:
    server, url = stub
    server.body = b" " * (5 * 1024 * 1024) + ONE  # whitespace: JSON that parses, were it read whole
    m = PrometheusProvider(url, retries=0).scalar("x", NOW, check_stale=False)
    assert m.problem is QueryProblem.MALFORMED and "over 4 MiB" in m.detail, m


def test_a_body_that_breaks_off_is_unreachable_not_an_exception() -> None:
    listener = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{\"status\":")

    threading.Thread(target=answer, daemon=True).start()
    try:
        m = PrometheusProvider(f"http://127.0.0.1:{listener.getsockname()[1]}", retries=0).scalar(
            "x", NOW, check_stale=False)
    finally:
        listener.close()
    assert m.problem is QueryProblem.UNREACHABLE, m


def test_a_measurement_sends_no_query_past_its_deadline(stub: tuple[Stub, str]) -> None:
    """Each query is quick, but together they are not: the one in flight at the deadline is cut, the rest are
    not sent, and no verdict is a pass."""
    server, url = stub
    server.delay = 0.5
    provider = PrometheusProvider(url, retries=0)
    first, second = run_analysis([METRIC, METRIC], REQUEST, provider, deadline_seconds=0.8)
    for verdict in (first, second):
        assert verdict.outcome is Outcome.INCONCLUSIVE, verdict
        assert verdict.evidence["problem"] == "PrometheusTooSlow" and verdict.evidence["failedQuery"], verdict
    assert "too slow: its answer was still arriving" in first.reason, first.reason
    assert "too slow: this measurement's time limit passed before the query was sent" in second.reason
    assert server.requests == 2  # the first metric's first two counts; of twelve queries in all
    assert provider.deadline is None  # the measurement's limit does not outlive it


def test_a_measurement_deadline_cuts_a_query_in_flight(trickle: str) -> None:
    """The provider's own limit (3 x 5 s here) is not waited out once the measurement's is over."""
    started = time.monotonic()
    (verdict,) = run_analysis([METRIC], REQUEST, PrometheusProvider(trickle), deadline_seconds=0.5)
    assert time.monotonic() - started < 3, verdict
    assert verdict.outcome is Outcome.INCONCLUSIVE and verdict.evidence["problem"] == "PrometheusTooSlow", verdict


def test_every_metric_after_the_deadline_is_inconclusive_at_once(stub: tuple[Stub, str]) -> None:
    server, url = stub
    verdicts = run_analysis([METRIC, METRIC], REQUEST, PrometheusProvider(url, retries=0), deadline_seconds=0)
    assert [v.outcome for v in verdicts] == [Outcome.INCONCLUSIVE] * 2
    assert server.requests == 0
