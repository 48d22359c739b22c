"""The gate's MLflow client follows no redirect, as the registry adapter and README say: a tracking URI answering 3xx
is an error naming where it points, and nothing is fetched from nor sent to there (a dataset from a host the gate never
named; gate-report.json uploaded elsewhere and reported recorded). Local http.server stubs on 127.0.0.1 only."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from test_gate_support import endpoint, run

from controller.gate import DatasetSources, GateOptions, run_gate
from controller.gate.errors import ErrorKind, SourceError
from controller.gate.mlflow_access import MlflowAccess, MlflowRest, download_artifact, upload_artifact
from controller.verdict import Outcome
from tests.http_stub import serving

TOKEN = "s3cr3t-TOKEN-redirect"
ARTIFACT = "mlflow-artifacts:/1/abc/artifacts/golden.jsonl"


class Recorder(ThreadingHTTPServer):
    """Answers every request 200 with a small JSON Lines body, and records it; `location` set: answers
    301 (GET JSON calls), 302 (artifact GETs) or 307 (PUTs) to there instead, the request's path appended."""

    def __init__(self, location: str = "") -> None:
        self.seen: list[str] = []
        self.location = location
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                owner.seen.append(f"{self.command} {self.path}")
                body = b'{"classes": ["a"]}\n'
                status = 200
                if owner.location:
                    status = 307 if self.command == "PUT" else 302 if "artifacts" in self.path else 301
                self.send_response(status)
                if owner.location:
                    self.send_header("Location", f"{owner.location}{self.path}")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = do_POST = _answer

            def log_message(self, *_: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture()
def servers() -> Iterator[tuple[Recorder, Recorder]]:
    """(front, elsewhere): the tracking URI, redirecting to another host's /stolen path with a secret in its query."""
    elsewhere = Recorder()
    with serving(elsewhere):
        front = Recorder(location=f"{elsewhere.url.replace('http://', 'http://ops:LOC-PASSWORD@')}/stolen")
        with serving(front):
            yield front, elsewhere


def access(url: str) -> MlflowAccess:
    return MlflowAccess(url, token=TOKEN, timeout_seconds=2.0, max_retries=0)


def assert_redirect_error(error: SourceError, status: int, method: str, elsewhere: Recorder) -> None:
    message = error.message
    assert error.kind is ErrorKind.ERROR
    # The same call under another base: the message names that base as the trackingUri to set (the registry's rule).
    assert f"with HTTP {status}, a redirect to 'http://127.0.0.1:{elsewhere.server_address[1]}/stolen'" in message, \
        message
    assert "set the registry's trackingUri" in message, message
    assert "redirects are not followed" in message and method in message
    assert TOKEN not in message and "LOC-PASSWORD" not in message


def test_an_artifact_download_redirected_elsewhere_is_an_error_and_nothing_is_fetched_there(
        servers: tuple[Recorder, Recorder]) -> None:
    front, elsewhere = servers
    sink = io.BytesIO()
    with pytest.raises(SourceError) as caught:
        download_artifact(access(front.url), ARTIFACT, sink, 10**6)
    assert_redirect_error(caught.value, 302, "GET", elsewhere)
    assert sink.getvalue() == b"" and elsewhere.seen == []


def test_an_evidence_upload_redirected_elsewhere_is_an_error_not_a_success(servers: tuple[Recorder, Recorder]) -> None:
    front, elsewhere = servers
    with pytest.raises(SourceError) as caught:
        upload_artifact(access(front.url), "mlflow-artifacts:/1/abc/artifacts/gate-report.json", b"{}",
                        "application/json")
    assert_redirect_error(caught.value, 307, "PUT", elsewhere)
    assert [seen.split(" ")[0] for seen in front.seen] == ["PUT"] and elsewhere.seen == []


def test_a_json_call_redirected_is_an_error_naming_where_it_points(servers: tuple[Recorder, Recorder]) -> None:
    front, elsewhere = servers
    with pytest.raises(SourceError) as caught:
        MlflowRest(access(front.url)).call("GET", "/api/2.0/mlflow/runs/get", params={"run_id": "abc"})
    assert_redirect_error(caught.value, 301, "GET", elsewhere)
    # Only the base it moved to is named: the redirect's query (a presigned URL's signature) never is.
    assert "run_id" not in caught.value.message and elsewhere.seen == []


def test_the_gate_reports_the_redirect_and_fetches_nothing_from_where_it_points(
        servers: tuple[Recorder, Recorder]) -> None:
    front, elsewhere = servers
    report = run(run_gate({"uri": ARTIFACT, "sha256": "0" * 64, "thresholds": {"minAccuracy": 0.9}},
                          endpoint("http://127.0.0.1:9"), None, namespace="ns",
                          sources=DatasetSources(mlflow=access(front.url)), options=GateOptions(retries=0)))
    assert report.outcome is Outcome.INCONCLUSIVE and report.error is not None
    assert "HTTP 302, a redirect to" in report.error.message and elsewhere.seen == []
    text = json.dumps([report.reason, report.status])
    assert TOKEN not in text and "LOC-PASSWORD" not in text


def test_without_a_redirect_the_download_is_read() -> None:
    server = Recorder()
    with serving(server):
        sink = io.BytesIO()
        sha, size = download_artifact(access(server.url), ARTIFACT, sink, 10**6)
    assert sink.getvalue() == b'{"classes": ["a"]}\n' and size == len(sink.getvalue())
    assert sha == hashlib.sha256(sink.getvalue()).hexdigest()
