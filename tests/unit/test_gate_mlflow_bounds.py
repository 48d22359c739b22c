"""The gate's MLflow client against a tracking server the tenant chose: answers are read bounded in size (after
decompression) and in total time, a download has an overall deadline, and a deleted evidence experiment is an
explained refusal; the evidence run is made once per gate request, even when MLflow answers its creation late.
Local http.server stubs on 127.0.0.1 only."""

from __future__ import annotations

import contextlib
import dataclasses
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
from typing import Any
from urllib.parse import urlsplit

import pytest

from controller.gate.errors import ErrorKind, SourceError
from controller.gate.evidence import TAG_PREFIX, record_gate_evidence
from controller.gate.mlflow_access import MlflowAccess, MlflowRest, experiment_id_for, resolve_artifact_uri
from controller.gate.runner import GateReport
from controller.verdict import DATASET_INTEGRITY, Outcome, Verdict
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


class RunStore:
    """An MLflow that keeps runs: search filters on the request_id tag and honours max_results and a start_time
    order_by (MLflow's default order is newest first); the first runs/create is made, then answered as `first`."""

    def __init__(self, first: str, runs: list[dict[str, Any]] | None = None) -> None:
        self.runs = runs or []
        self.first = first  # "late": after the client's timeout; "proxy-503": a proxy's error instead
        self.creates = 0
        self.searches: list[dict[str, Any]] = []
        self.release = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, answer: dict[str, Any]) -> None:
                body = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(OSError):  # the client gave up on a late answer
                    self.wfile.write(body)

            def do_GET(self) -> None:
                self._send(200, {"experiment": {"experiment_id": "1", "lifecycle_stage": "active"}})

            def do_PUT(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self._send(200, {})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                if self.path.endswith("/runs/search"):
                    owner.searches.append(body)
                    want = body["filter"].split("= '", 1)[1].rstrip("'")
                    found = [run for run in owner.runs if run["tags"].get(f"{TAG_PREFIX}.request_id") == want]
                    ascending = "attributes.start_time ASC" in body.get("order_by", [])
                    found.sort(key=lambda run: run["info"]["start_time"], reverse=not ascending)
                    return self._send(200, {"runs": [{"info": run["info"], "data": {"metrics": [
                        {"key": key, "value": points[-1]} for key, points in run.get("metrics", {}).items()]}}
                        for run in found[:body["max_results"]]]})
                if self.path.endswith("/runs/log-batch"):
                    run = next(run for run in owner.runs if run["info"]["run_id"] == body["run_id"])
                    for metric in body.get("metrics", []):
                        run.setdefault("metrics", {}).setdefault(metric["key"], []).append(metric["value"])
                    run["tags"].update({tag["key"]: tag["value"] for tag in body.get("tags", [])})
                if self.path.endswith("/runs/create"):
                    owner.creates += 1
                    run_id = f"run{len(owner.runs) + 1}"
                    run = {"info": {"run_id": run_id, "artifact_uri": f"mlflow-artifacts:/1/{run_id}/artifacts",
                                    "status": "RUNNING", "start_time": body["start_time"]},
                           "tags": {tag["key"]: tag["value"] for tag in body["tags"]}}
                    owner.runs.append(run)  # committed, whatever the client hears
                    if owner.creates == 1 and owner.first == "proxy-503":
                        return self._send(503, {"error_code": "TEMPORARILY_UNAVAILABLE", "message": "proxy"})
                    if owner.creates == 1:
                        owner.release.wait(5)  # past the client's 0.5 s timeout
                    return self._send(200, {"run": {"info": run["info"]}})
                if self.path.endswith("/runs/update"):
                    next(run for run in owner.runs if run["info"]["run_id"] == body["run_id"])["info"]["status"] = \
                        body["status"]
                self._send(200, {})

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)


EVIDENCE_REPORT = GateReport(outcome=Outcome.PASS, reason="ok", verdicts=(Verdict("accuracy", Outcome.PASS, "0.98"),),
                             dataset_sha256="ab" * 32, status={"dataset": {"uri": "configmap://g/s"}}, evidence={})


def record(url: str, request_id: str = "uid-1/gate-1") -> str:
    access = MlflowAccess(url, token=TOKEN, timeout_seconds=0.5, max_retries=2)
    return record_gate_evidence(access, EVIDENCE_REPORT, model_name="m", candidate_version="8", rollout="ns/ro",
                                request_id=request_id).run_id


@pytest.mark.parametrize("first", ["late", "proxy-503"])
def test_an_evidence_run_created_but_answered_late_is_not_created_twice(first: str) -> None:
    # mlflow's session retries POSTs on a read timeout or a 5xx: the old code made a second run for the request,
    # and left the first RUNNING and empty, which a later re-record then picked.
    store = RunStore(first)
    with serving(store.server) as url:
        try:
            run_id = record(url)
        finally:
            store.release.set()
        again = record(url)
    assert store.creates == 1 and [run["info"]["run_id"] for run in store.runs] == ["run1"]
    assert run_id == again == "run1" and store.runs[0]["info"]["status"] == "FINISHED"


def test_a_re_record_takes_the_finished_run_of_its_request_never_mlflows_default_order() -> None:
    # Twins left by an older operator: the evidence is in the FINISHED one; an empty RUNNING one is older, and
    # MLflow's default order (newest first) would hand back another FINISHED one.
    def run(run_id: str, status: str, start: int) -> dict[str, Any]:
        return {"info": {"run_id": run_id, "artifact_uri": f"mlflow-artifacts:/1/{run_id}/artifacts",
                         "status": status, "start_time": start}, "tags": {f"{TAG_PREFIX}.request_id": "uid-1/gate-1"}}

    store = RunStore("late", [run("empty", "RUNNING", 1), run("kept", "FINISHED", 2), run("later", "FINISHED", 3)])
    with serving(store.server) as url:
        assert record(url) == "kept"
    assert store.creates == 0 and store.searches[0]["order_by"] == ["attributes.start_time ASC"]


def test_a_re_record_after_a_restart_logs_each_number_once() -> None:
    # An operator killed after recording re-records the same request: its metrics were logged again, so the run's
    # history showed every number twice, as if the gate had run twice. A number that did change is still logged.
    def report(usable: int) -> GateReport:
        return dataclasses.replace(EVIDENCE_REPORT, status={"dataset": {
            "uri": "configmap://g/s", "usable": usable, "unusable": 2}})

    store = RunStore("late")
    store.release.set()
    with serving(store.server) as url:
        access = MlflowAccess(url, token=TOKEN, timeout_seconds=0.5, max_retries=2)
        for usable in (100, 100, 120):
            record_gate_evidence(access, report(usable), model_name="m", candidate_version="8",
                                 request_id="uid-1/gate-1")
    assert store.creates == 1
    assert store.runs[0]["metrics"] == {"dataset.usable_samples": [100.0, 120.0], "dataset.unusable_samples": [2.0]}


def test_a_dataset_that_is_not_the_pinned_one_tags_the_version_dataset_mismatch_not_fail() -> None:
    # The README: a mismatched dataset rolls back without judging the candidate; a version tagged outcome=fail
    # told registry readers the model had failed its gate.
    mismatch = dataclasses.replace(EVIDENCE_REPORT, outcome=Outcome.FAIL, verdicts=(
        Verdict(DATASET_INTEGRITY, Outcome.FAIL, "dataset sha256 mismatch"),))
    store = RunStore("late")
    store.release.set()
    with serving(store.server) as url:
        access = MlflowAccess(url, token=TOKEN, timeout_seconds=0.5, max_retries=2)
        tags = record_gate_evidence(access, mismatch, model_name="m", candidate_version="8",
                                    request_id="uid-1/gate-2").version_tags
        failed = dataclasses.replace(mismatch, verdicts=(*mismatch.verdicts, Verdict("accuracy", Outcome.FAIL, "0.5")))
        judged = record_gate_evidence(access, failed, model_name="m", candidate_version="8",
                                      request_id="uid-1/gate-3").version_tags
    assert tags[f"{TAG_PREFIX}.outcome"] == "dataset-mismatch"
    assert judged[f"{TAG_PREFIX}.outcome"] == "fail"
    assert store.runs[0]["tags"][f"{TAG_PREFIX}.outcome"] == "fail"  # the run keeps the gate's own outcome
