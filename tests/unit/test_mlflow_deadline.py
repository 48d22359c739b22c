"""Both MLflow clients (the registry adapter and the gate's) against a tracking server the tenant chose: a call, all
its tries from sending to the whole body read, ends at the call's deadline wherever the server stalls it (headers a
byte at a time, a retried answer's body), and a Retry-After is not slept. Stand-ins bind to 127.0.0.1 only."""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from test_prometheus_deadline import raw_server, slow_headers, unavailable_trickled

from controller.gate.errors import ErrorKind, SourceError
from controller.gate.mlflow_access import MlflowAccess, MlflowRest
from controller.registry import RegistryUnavailable
from controller.registry.mlflow_rest import MlflowRegistry, RequestPolicy

RUNS_GET = "/api/2.0/mlflow/runs/get"
ARTIFACT = "/api/2.0/mlflow-artifacts/artifacts/golden.jsonl"


def ended(call: Callable[[], object], within: float) -> tuple[BaseException | None, float]:
    """What `call` raised and how long it took; fails once it runs past `within` (the old code held the caller for
    as long as the server kept trickling, or slept a Retry-After: the test must not wait that long)."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as exc:  # reported to the test
            outcome.append(exc)

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(within)
    took = time.monotonic() - started
    assert outcome, f"still under way after {took:.1f} s (limit {within:g} s)"
    return outcome[0], took


@pytest.mark.parametrize(("answer", "retries"), [(slow_headers, 0), (slow_headers, 2), (unavailable_trickled, 2)])
def test_the_registry_adapter_is_cut_at_the_calls_deadline_wherever_the_answer_is(
        answer: Callable[[socket.socket], None], retries: int) -> None:
    policy = RequestPolicy(timeout_seconds=0.3, max_retries=retries, backoff_seconds=0.0)
    deadline = policy.timeout_seconds * (1 + retries)
    with raw_server(answer) as (url, _):
        error, took = ended(lambda: MlflowRegistry(url, policy=policy).resolve("m", version="1"), deadline + 1)
    assert isinstance(error, RegistryUnavailable), error
    assert f"its answer took over {deadline:g}s" in str(error) and took >= deadline, (took, error)


@pytest.mark.parametrize(("answer", "retries"), [(slow_headers, 0), (slow_headers, 1), (unavailable_trickled, 1)])
@pytest.mark.parametrize("call", ["call", "stream_to", "upload"])
def test_the_gates_client_is_cut_at_the_calls_deadline_wherever_the_answer_is(
        answer: Callable[[socket.socket], None], retries: int, call: str) -> None:
    """The registry was too slow (UNAVAILABLE, tried again on a later reconcile): never an answer, never a pass."""
    with raw_server(answer) as (url, _):
        rest = MlflowRest(MlflowAccess(url, timeout_seconds=0.3, max_retries=retries, download_timeout_seconds=0.5))
        deadline, send = {
            "call": (rest._call_seconds(), lambda: rest.call("GET", RUNS_GET, params={"run_id": "r"})),
            "stream_to": (0.5, lambda: rest.stream_to(ARTIFACT, io.BytesIO(), 10**6)),
            "upload": (rest._call_seconds(), lambda: rest.upload(ARTIFACT, b"{}")),
        }[call]
        error, took = ended(send, deadline + 1)
    assert isinstance(error, SourceError) and error.kind is ErrorKind.UNAVAILABLE, error
    assert f"took over {deadline:g}s" in error.message and took >= deadline, (took, error.message)


def test_the_gates_client_does_not_sleep_what_a_retry_after_asks() -> None:
    """urllib3 would sleep Retry-After (up to 6 h) before each retry: the call is tried again at once instead."""
    def too_many(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 999\r\nContent-Length: 0\r\n"
                     b"Connection: close\r\n\r\n")

    with raw_server(too_many) as (url, connections):
        rest = MlflowRest(MlflowAccess(url, timeout_seconds=5.0, max_retries=1))
        error, took = ended(lambda: rest.call("GET", RUNS_GET, params={"run_id": "r"}), 3)
    assert isinstance(error, SourceError) and error.kind is ErrorKind.UNAVAILABLE, error
    assert "HTTP 429" in error.message and connections[0] == 2 and took < 2, (took, connections, error.message)


def test_one_calls_deadline_never_cuts_another_calls_answer_on_a_pooled_connection() -> None:
    """mlflow keeps one session for the process: A's connection, drained of a 503, went back to the pool while A
    slept its backoff; B took it, and A's deadline then cut B's answer, which urllib3 sent again (two runs made)."""
    created: list[float] = []
    gets = [0]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_: object) -> None:
            pass

        def _send(self, code: int, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            gets[0] += 1
            if gets[0] <= 2:
                self._send(503, b'{"error_code": "TEMPORARILY_UNAVAILABLE"}')
            else:
                time.sleep(3)
                self._send(200, b"{}")

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            created.append(time.monotonic())
            time.sleep(2)
            with contextlib.suppress(OSError):
                self._send(200, b'{"run": {"info": {"run_id": "r1"}}}')

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    answers: dict[str, object] = {}

    def call_a() -> None:  # deadline 1.5 s, reached while it sleeps its backoff after two 503s
        with contextlib.suppress(SourceError):
            MlflowRest(MlflowAccess(url, timeout_seconds=0.5, max_retries=2)).call("GET", RUNS_GET,
                                                                                   params={"run_id": "a"})

    def call_b() -> None:
        answers["b"] = MlflowRest(MlflowAccess(url, timeout_seconds=30.0, max_retries=2)).call(
            "POST", "/api/2.0/mlflow/runs/create", body={"experiment_id": "1"})

    try:
        a = threading.Thread(target=call_a)
        a.start()
        time.sleep(0.3)
        b = threading.Thread(target=call_b)
        b.start()
        a.join(10)
        b.join(10)
    finally:
        server.shutdown()
        server.server_close()
    assert answers.get("b") == {"run": {"info": {"run_id": "r1"}}}
    assert len(created) == 1, "B's one call made two runs"
