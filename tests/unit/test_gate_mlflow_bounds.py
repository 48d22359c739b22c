"""The gate's MLflow client against a tracking server the tenant chose: answers are read bounded in size (after
decompression) and in total time, a download has an overall deadline, and a deleted evidence experiment is an
explained refusal. Local http.server stubs on 127.0.0.1 only."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

from controller.gate.errors import ErrorKind, SourceError
from controller.gate.mlflow_access import MlflowAccess, MlflowRest, experiment_id_for, resolve_artifact_uri
from tests.http_stub import serving

TOKEN = "s3cr3t-TOKEN-bounds"
API = "/api/2.0/mlflow"
ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts"
# 64 MiB of JSON in ~64 KiB of gzip: what a tenant's "tracking server" can send to make the operator hold it.
BOMB = gzip.compress(b'{"run": {"info": {"artifact_uri": "' + b"x" * (64 * 1024 * 1024) + b'"}}}', 9)


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    drip_seconds: float = 0.0  # > 0: one byte at a time, this long apart (each wait is short, the whole is not)
    declared_length: int | None = None  # larger than the body: the connection closes early


class Stub:
    """An HTTP server answering each path (longest matching prefix) as scripted."""

    def __init__(self) -> None:
        self.routes: dict[str, Reply] = {}
        self.stop = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = urlsplit(self.path).path
                matches = [prefix for prefix in owner.routes if path.startswith(prefix)]
                reply = owner.routes[max(matches, key=len)] if matches else Reply(404, b"{}")
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(reply.declared_length or len(reply.body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                try:
                    if not reply.drip_seconds:
                        self.wfile.write(reply.body)
                        return
                    for byte in reply.body:
                        if owner.stop.is_set():
                            return
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(reply.drip_seconds)
                except OSError:  # the client gave up: that is the point
                    return

            do_GET = do_POST = do_PUT = _answer

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def access(self, **options: float) -> MlflowAccess:
        return MlflowAccess(self.url, token=TOKEN, **{"timeout_seconds": 1.0, "max_retries": 0, **options})


@pytest.fixture()
def stub() -> Iterator[Stub]:
    fake = Stub()
    with serving(fake.server):
        yield fake
        fake.stop.set()


def raised(call: Callable[[], object]) -> tuple[SourceError, float, int]:
    """The SourceError call raises, how long it took, and the peak of Python memory allocated meanwhile."""
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(SourceError) as caught:
            call()
        return caught.value, time.monotonic() - started, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_gzip_bomb_answering_runs_get_is_refused_without_inflating_it(stub: Stub) -> None:
    stub.routes[f"{API}/runs/get"] = Reply(200, BOMB, {"Content-Encoding": "gzip"})
    rest = MlflowRest(stub.access())
    with pytest.raises(SourceError):  # once, so that the imports are not counted below
        rest.call("GET", f"{API}/runs/get", params={"run_id": "abc"})
    error, _, peak = raised(lambda: resolve_artifact_uri(rest, "runs:/abc/golden.jsonl"))
    assert error.kind is ErrorKind.ERROR and "over 4 MiB" in error.message and TOKEN not in error.message
    assert peak < 16 * 1024 * 1024, f"{peak / 2**20:.0f} MiB held for a 64 MiB answer"


@pytest.mark.parametrize("status", [404, 500])
def test_a_huge_error_body_is_not_held_whole_either(stub: Stub, status: int) -> None:
    stub.routes[f"{API}/model-versions/get-download-uri"] = Reply(status, BOMB, {"Content-Encoding": "gzip"})
    stub.routes[ARTIFACTS] = Reply(status, BOMB, {"Content-Encoding": "gzip"})
    rest = MlflowRest(stub.access())
    with pytest.raises(SourceError):
        rest.call("GET", f"{API}/model-versions/get-download-uri")
    error, _, peak = raised(lambda: resolve_artifact_uri(rest, "models:/m/3/golden.jsonl"))
    assert "over 4 MiB" in error.message and peak < 16 * 1024 * 1024
    error, _, peak = raised(lambda: rest.stream_to(f"{ARTIFACTS}/golden.jsonl", io.BytesIO(), 10**9))
    assert "over 4 MiB" in error.message and peak < 16 * 1024 * 1024


def test_an_answer_dripped_a_byte_at_a_time_is_cut_off_at_the_calls_deadline(stub: Stub) -> None:
    answer = json.dumps({"experiment": {"experiment_id": "1", "lifecycle_stage": "active"}}).encode()
    stub.routes[f"{API}/experiments/get-by-name"] = Reply(200, answer, drip_seconds=0.25)  # ~16 s in all
    error, took, _ = raised(lambda: experiment_id_for(MlflowRest(stub.access()), "modelrollout-golden-gate"))
    assert error.kind is ErrorKind.UNAVAILABLE and "took over 1s" in error.message, error.message
    assert took < 5 and TOKEN not in error.message


def test_a_download_dripped_a_byte_at_a_time_is_cut_off_at_its_overall_deadline(stub: Stub) -> None:
    stub.routes[ARTIFACTS] = Reply(200, b'{"classes": ["a"]}\n' * 4, drip_seconds=0.25)  # ~19 s in all
    rest = MlflowRest(stub.access(download_timeout_seconds=2.0))
    error, took, _ = raised(lambda: rest.stream_to(f"{ARTIFACTS}/golden.jsonl", io.BytesIO(), 10**6))
    assert error.kind is ErrorKind.UNAVAILABLE and "the download took over 2s" in error.message, error.message
    assert took < 6 and TOKEN not in error.message


def test_a_download_within_its_deadline_is_whole_and_one_that_breaks_off_says_so(stub: Stub) -> None:
    data = b'{"classes": ["a", "b"]}\n' * 1000
    stub.routes[ARTIFACTS] = Reply(200, data)
    sink = io.BytesIO()
    rest = MlflowRest(stub.access(download_timeout_seconds=5.0))
    assert rest.stream_to(f"{ARTIFACTS}/golden.jsonl", sink, 10**6) == (hashlib.sha256(data).hexdigest(), len(data))
    assert sink.getvalue() == data
    stub.routes[ARTIFACTS] = Reply(200, data, declared_length=len(data) * 2)
    with pytest.raises(SourceError) as caught:
        rest.stream_to(f"{ARTIFACTS}/golden.jsonl", io.BytesIO(), 10**6)
    assert caught.value.kind is ErrorKind.UNAVAILABLE
    assert "download broke off: the connection closed before the answer was complete" in caught.value.message


def test_a_deleted_evidence_experiment_is_refused_saying_to_restore_it(stub: Stub) -> None:
    # MLflow's get-by-name finds deleted experiments too, and then refuses to create runs in them.
    stub.routes[f"{API}/experiments/get-by-name"] = Reply(200, json.dumps(
        {"experiment": {"experiment_id": "5", "name": "modelrollout-golden-gate", "lifecycle_stage": "deleted"}}
    ).encode())
    with pytest.raises(SourceError) as caught:
        experiment_id_for(MlflowRest(stub.access()), "modelrollout-golden-gate")
    message = caught.value.message
    assert caught.value.kind is ErrorKind.INVALID
    assert "'modelrollout-golden-gate' (id 5) is deleted" in message and "restore" in message
    stub.routes[f"{API}/experiments/get-by-name"] = Reply(200, json.dumps(
        {"experiment": {"experiment_id": "5", "lifecycle_stage": "active"}}).encode())
    assert experiment_id_for(MlflowRest(stub.access()), "modelrollout-golden-gate") == "5"
