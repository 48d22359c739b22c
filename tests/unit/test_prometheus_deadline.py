"""How long one query, and one measurement, may hold a queue worker: a Prometheus address is the rollout's, and a
server that asks for hours (Retry-After), trickles its answer or sends a flood must cost seconds, not hours."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote_plus

import pytest

from controller.analysis.prometheus import PrometheusProvider, QueryProblem
from controller.analysis.runner import AnalysisRequest, run_analysis
from controller.api.spec import MetricSpec, ProportionMetric
from controller.verdict import Outcome
from tests.http_stub import serving
from tests.unit.test_prometheus_provider import stamped, vector

NOW = datetime(2026, 1, 1, 0, 10, tzinfo=UTC)
# A whole answer for the raw servers below, which are cut off before it is read (Stub stamps its own: `vector`).
ONE = json.dumps({"status": "success", "data": {"resultType": "vector",
                                                "result": [{"metric": {}, "value": [1, "1"]}]}}).encode()
METRIC = MetricSpec("nsfw", ProportionMetric(events='sum(increase(p{ {{selector}}, c="nsfw"}[{{window}}]))',
                                             total="sum(increase(p{ {{selector}} }[{{window}}]))"))
REQUEST = AnalysisRequest("ns", "svc", "canary", NOW - timedelta(minutes=10), NOW, candidate_version="7")


class Stub:
    """Answers every POST with `status`, `headers` and `body` (or routes[a text its query holds]), after `delay`
    seconds, stamped with the evaluation time asked for as Prometheus does (see `stamped`); counts the requests."""

    def __init__(self) -> None:
        self.status, self.headers, self.body, self.delay, self.requests = 200, {}, vector(1), 0.0, 0
        self.routes: dict[str, bytes] = {}
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                owner.requests += 1
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                time.sleep(owner.delay)
                body = next((body for text, body in owner.routes.items() if text in unquote_plus(self.path)),
                            owner.body)
                params = {name: values[0] for name, values in parse_qs(self.path.partition("?")[2]).items()}
                body = stamped(body, params)
                self.send_response(owner.status)
                for name, value in owner.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

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


def test_a_metric_sends_no_query_past_its_budget(stub: tuple[Stub, str]) -> None:
    """Each query is quick, but together they are not: the one in flight when the metric's budget runs out is cut,
    the rest are not sent, the verdict says the budget ran out, and it is not a pass. The next metric has its own."""
    server, url = stub
    server.delay = 0.5
    provider = PrometheusProvider(url, retries=0)
    first, second = run_analysis([METRIC, METRIC], REQUEST, provider, base_seconds=0.8, per_query_seconds=0)
    for verdict in (first, second):
        assert verdict.outcome is Outcome.INCONCLUSIVE, verdict
        assert verdict.evidence["problem"] == "PrometheusTooSlow" and verdict.evidence["failedQuery"], verdict
        assert "this metric's measurement budget of 0.8 s ran out after 2 queries, the last still unanswered" in (
            verdict.reason), verdict.reason
    assert server.requests == 4  # each metric's first two counts; of twelve queries in all
    assert provider.budget is None  # a metric's budget does not outlive the measurement


def test_a_metric_whose_budget_ran_out_says_so(stub: tuple[Stub, str]) -> None:
    server, url = stub
    verdicts = run_analysis([METRIC, METRIC], REQUEST, PrometheusProvider(url, retries=0), base_seconds=0,
                            per_query_seconds=0)
    assert [v.outcome for v in verdicts] == [Outcome.INCONCLUSIVE] * 2
    assert all("measurement budget of 0 s ran out after 0 queries, so this query was not sent" in v.reason
               for v in verdicts), verdicts
    assert server.requests == 0


def test_a_measurement_budget_cuts_a_query_in_flight(trickle: str) -> None:
    """The provider's own limit (3 x 5 s here) is not waited out once the metric's budget is over."""
    started = time.monotonic()
    (verdict,) = run_analysis([METRIC], REQUEST, PrometheusProvider(trickle), base_seconds=0.5, per_query_seconds=0)
    assert time.monotonic() - started < 3, verdict
    assert verdict.outcome is Outcome.INCONCLUSIVE and verdict.evidence["problem"] == "PrometheusTooSlow", verdict


def test_a_long_bake_at_a_normal_speed_is_judged_not_too_slow(stub: tuple[Stub, str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A 28-day baseline and 4 metrics send 468 queries: at 0.3 s each (a clock moved on by that per query), one
    60 s budget for them all left the last metrics inconclusive every time. Each metric's budget grows with its
    queries."""
    server, url = stub
    server.body = vector(10000)
    server.routes['c="nsfw"'] = vector(50)
    real = time.monotonic
    monkeypatch.setattr(time, "monotonic", lambda: real() + 0.3 * server.requests)
    request = AnalysisRequest("ns", "svc", "bake", NOW - timedelta(hours=6), NOW, baseline_window=timedelta(days=28),
                              candidate_version="8", baseline_version="7")
    verdicts = run_analysis([METRIC] * 4, request, PrometheusProvider(url, retries=0))
    assert [v.outcome for v in verdicts] == [Outcome.PASS] * 4, [v.reason for v in verdicts]
    assert server.requests == 4 * (5 + 4 * 28)  # its counts, freshness, two counts of series, 28 days of four


@contextlib.contextmanager
def raw_server(answer: Callable[[socket.socket], None]) -> Iterator[tuple[str, list[int]]]:
    """A stand-in that writes what `answer` sends on each connection (it stops once the client hangs up, an
    OSError); yields its URL and a list holding its count of connections."""
    listener = socket.create_server(("127.0.0.1", 0))
    connections = [0]

    def handle(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.recv(65536)
            answer(conn)

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            connections[0] += 1
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", connections
    finally:
        listener.close()


def trickled(conn: socket.socket, head: bytes, each: bytes, tail: bytes, seconds: float = 4.0) -> None:
    """Sends head, then `each` every 0.1 s for `seconds` (no wait for bytes is long), then tail."""
    conn.sendall(head)
    ends = time.monotonic() + seconds
    while time.monotonic() < ends:
        conn.sendall(each)
        time.sleep(0.1)
    conn.sendall(tail)


def slow_headers(conn: socket.socket) -> None:
    trickled(conn, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Pad: ", b"a",
             b"\r\nContent-Length: %d\r\n\r\n" % len(ONE) + ONE)


def unavailable_trickled(conn: socket.socket) -> None:
    """A 503 (tried again) whose chunked body urllib3 would drain, without limit, before each retry."""
    trickled(conn, b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n", b"1\r\nx\r\n",
             b"0\r\n\r\n")


def gzip_of_nothing(conn: socket.socket) -> None:
    """A gzip body of empty deflate blocks: bytes keep coming, but decode to nothing."""
    deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
    trickled(conn, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
             b"Connection: close\r\n\r\n\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff", b"\x00\x00\x00\xff\xff",
             deflate.compress(ONE) + deflate.flush() + zlib.crc32(ONE).to_bytes(4, "little")
             + len(ONE).to_bytes(4, "little"))


@pytest.mark.parametrize(("answer", "retries"), [(slow_headers, 0), (unavailable_trickled, 2), (gzip_of_nothing, 0)])
def test_a_query_is_cut_at_its_deadline_wherever_its_answer_is(answer: Callable[[socket.socket], None],
                                                               retries: int) -> None:
    """Headers a byte at a time, a retried answer's body, a body that decodes to nothing: all once past the
    query's deadline (0.3 s per try here), which the message states as it was."""
    with raw_server(answer) as (url, _):
        provider = PrometheusProvider(url, timeout_seconds=0.3, retries=retries)
        started = time.monotonic()
        m = provider.scalar("x", NOW, check_stale=False)
        elapsed = time.monotonic() - started
    assert elapsed < provider.query_seconds + 1, (elapsed, m)
    assert m.problem is QueryProblem.SLOW, m
    took = re.search(r"too slow: no whole answer ([\d.]+) s after the query was sent", m.detail)
    assert took and provider.query_seconds <= float(took.group(1)) < provider.query_seconds + 1, m.detail


def test_a_tunnel_through_a_proxy_is_cut_at_the_query_deadline_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """An https Prometheus through a proxy: the proxy's answer to CONNECT is read inside connect(), before the
    connection was watched, and each wait for its bytes was short (it took the whole 4 s trickle)."""
    with raw_server(slow_headers) as (proxy, _):
        monkeypatch.setenv("HTTPS_PROXY", proxy)
        for name in ("NO_PROXY", "no_proxy", "https_proxy"):
            monkeypatch.delenv(name, raising=False)
        provider = PrometheusProvider("https://prometheus.invalid:9090", timeout_seconds=0.3, retries=0)
        started = time.monotonic()
        m = provider.scalar("x", NOW, check_stale=False)
        elapsed = time.monotonic() - started
    assert elapsed < provider.query_seconds + 1, (elapsed, m)
    assert m.problem is QueryProblem.SLOW, m


def test_a_redirect_is_not_followed() -> None:
    """Prometheus' API never redirects: requests would follow 30, each its own wait."""
    def redirect(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 307 Temporary Redirect\r\nLocation: /api/v1/query\r\nContent-Length: 0\r\n"
                     b"Connection: close\r\n\r\n")

    with raw_server(redirect) as (url, connections):
        m = PrometheusProvider(url, retries=2).scalar("x", NOW, check_stale=False)
    assert m.problem is QueryProblem.UNREACHABLE and "answered with a redirect (HTTP 307)" in m.detail, m
    assert connections[0] == 1


def test_a_query_through_a_proxy_is_cut_at_its_deadline_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """requests makes a proxy's connections elsewhere, and hands the same proxy manager back for the next query."""
    with raw_server(slow_headers) as (proxy, connections):
        monkeypatch.setenv("HTTP_PROXY", proxy)
        for name in ("NO_PROXY", "no_proxy", "http_proxy"):
            monkeypatch.delenv(name, raising=False)
        provider = PrometheusProvider("http://prometheus.invalid:9090", timeout_seconds=0.3, retries=0)
        started = time.monotonic()
        answers = [provider.scalar("x", NOW, check_stale=False) for _ in range(2)]
        elapsed = time.monotonic() - started
    assert [m.problem for m in answers] == [QueryProblem.SLOW] * 2, answers
    assert elapsed < 2 and connections[0] == 2, (elapsed, connections)


def test_all_metrics_together_stay_within_the_measurement_cap(stub: tuple[Stub, str]) -> None:
    """However many metrics and however long their baselines, one rollout holds a worker no longer than the cap:
    the metrics left when it is spent send nothing and are inconclusive, never a pass."""
    server, url = stub
    server.delay = 0.3
    started = time.monotonic()
    verdicts = run_analysis([METRIC] * 5, REQUEST, PrometheusProvider(url, retries=0), max_seconds=1.0)
    assert time.monotonic() - started < 2.5
    assert verdicts[-1].outcome is Outcome.INCONCLUSIVE and "ran out after 0 queries" in verdicts[-1].reason
    assert all(v.outcome is not Outcome.PASS for v in verdicts[1:]), [v.reason for v in verdicts]


def test_a_cut_reaches_every_socket_even_past_one_that_is_no_socket() -> None:
    """TLS inside TLS (an https proxy to an https Prometheus) hands urllib3's SSLTransport, whose `socket` is the
    outer one: unwrapped and shut; and nothing the cut raises stops it before the other sockets."""
    from controller.http_deadline import shut as _shut  # the one place a cut happens

    left, right = socket.socketpair()
    with left, right:
        class Transport:  # the shape of urllib3.util.ssltransport.SSLTransport
            socket = left

        _shut(Transport())
        assert left.recv(1) == b""  # shut for reading: a reader wakes with end-of-file
        _shut(object())  # not a socket and nothing to unwrap: no exception escapes
