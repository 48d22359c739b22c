"""What the gate's MLflow client and the registry adapter make of answers a real MLflow never gives but a proxy,
a broken server or another implementation can: each becomes an explained error (a condition or an inconclusive
gate), never an exception escaping the reconcile, never a secret in a message or a log line."""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from kubernetes import client
from test_gate_support import CLASSES, identity_model, model_server, run

from controller.api.spec import parse_spec
from controller.api.status import VersionRef
from controller.engine.actions import RunGate
from controller.gate import DatasetSources, GateReport, InferenceEndpoint, MlflowAccess, run_gate
from controller.gate.errors import ErrorKind, SourceError
from controller.gate.formats import write_jsonl_dataset
from controller.gate.mlflow_access import MlflowRest, experiment_id_for
from controller.operator.runtime import OperatorConfig, RolloutRuntime
from controller.registry import (
    Credentials,
    MlflowRegistry,
    RegistryAccessDenied,
    RegistryRequestError,
    RequestPolicy,
)
from controller.verdict import Outcome
from tests.http_stub import serving

TOKEN = "s3cr3t-TOKEN-value"
USERNAME, PASSWORD = "ops", "pa55-w0rd-very-secret"
BASIC_PAIR = base64.standard_b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts"
API = "/api/2.0/mlflow"
NOT_FOUND = {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "not found"}


@dataclass
class Answer:
    status: int
    body: Any  # JSON-encoded unless bytes; "{authorization}" in it becomes the request's Authorization header
    declared_length: int | None = None  # a Content-Length larger than the body: the connection closes early


class FakeMlflow:
    """A real HTTP server on 127.0.0.1 answering each path (the longest matching prefix) as scripted."""

    def __init__(self) -> None:
        self.routes: dict[str, Answer] = {}
        self.authorizations: list[str] = []  # the Authorization header of each request, in order
        self.paths: list[str] = []  # each request's path and query, in order
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                owner.authorizations.append(self.headers.get("Authorization", ""))
                owner.paths.append(self.path)
                path = urlsplit(self.path).path
                matches = [prefix for prefix in owner.routes if path.startswith(prefix)]
                answer = owner.routes[max(matches, key=len)] if matches else Answer(404, NOT_FOUND)
                body = answer.body if isinstance(answer.body, bytes) else json.dumps(answer.body).encode()
                body = body.replace(b"{authorization}", self.headers.get("Authorization", "").encode())
                self.send_response(answer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(answer.declared_length or len(body)))
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            do_GET = do_POST = do_PUT = _answer

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def answer(self, path: str, status: int, body: Any, declared_length: int | None = None) -> None:
        self.routes[path] = Answer(status, body, declared_length)


@pytest.fixture()
def mlflow() -> Iterator[FakeMlflow]:
    fake = FakeMlflow()
    with serving(fake.server):
        yield fake


def access(fake: FakeMlflow, **credentials: str) -> MlflowAccess:
    return MlflowAccess(fake.url, timeout_seconds=3, max_retries=0, **(credentials or {"token": TOKEN}))


def gate_on(fake: FakeMlflow, uri: str, **credentials: str) -> GateReport:
    """The gate with its dataset at uri; no inference server: these datasets must never get that far."""
    unreachable = InferenceEndpoint.from_url("http://127.0.0.1:9/", "m")
    return run(run_gate({"uri": uri, "sha256": "0" * 64}, unreachable, None, namespace="team-a",
                        sources=DatasetSources(mlflow=access(fake, **credentials))))


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in (TOKEN, PASSWORD, BASIC_PAIR, TOKEN[:8], BASIC_PAIR[:8]):
            assert secret not in text, text


# --- the golden gate reading its dataset -------------------------------------------------------------


def test_an_artifact_download_that_breaks_off_is_unavailable_not_a_crash(mlflow: FakeMlflow) -> None:
    mlflow.answer(f"{ARTIFACTS}/golden/", 200, b'{"classes": ["safe"]}\n', declared_length=100_000)
    report = gate_on(mlflow, "mlflow-artifacts:/golden/set.jsonl")
    assert report.outcome is Outcome.INCONCLUSIVE and report.error is not None
    assert report.error.kind == ErrorKind.UNAVAILABLE  # a later reconcile may well get the whole file
    assert "download broke off" in report.error.message
    assert "closed before the answer was complete" in report.error.message
    assert report.status["error"]["message"] == report.error.message


@pytest.mark.parametrize(("uri", "path", "body", "detail"), [
    ("runs:/abc123/golden.jsonl", f"{API}/runs/get", {"run": None}, "no artifact_uri for run abc123"),
    ("runs:/abc123/golden.jsonl", f"{API}/runs/get", {"run": ["x"]}, "run is an array, not an object"),
    ("runs:/abc123/golden.jsonl", f"{API}/runs/get", {"run": {"info": {"artifact_uri": 7}}},
     "run.info.artifact_uri is a number, not a string"),
    ("models:/m@golden/set.jsonl", f"{API}/registered-models/alias", {"model_version": None},
     "alias @golden of model m names no version"),
    ("models:/m@golden/set.jsonl", f"{API}/registered-models/alias", {"model_version": {"version": {"v": 1}}},
     "model_version.version is an object, not a string"),
    ("models:/m/3/set.jsonl", f"{API}/model-versions/get-download-uri", {"artifact_uri": {"uri": "s3://b/k"}},
     "artifact_uri is an object, not a string"),
    ("models:/m/3/set.jsonl", f"{API}/model-versions/get-download-uri", [], "JSON but not an object"),
    ("models:/m-0abc/set.jsonl", f"{API}/logged-models/", {"model": None},
     "no artifact location for logged model m-0abc"),
])
def test_malformed_answers_while_resolving_a_dataset_uri_are_errors_that_say_what_was_wrong(
        mlflow: FakeMlflow, uri: str, path: str, body: Any, detail: str) -> None:
    mlflow.answer(path, 200, body)
    report = gate_on(mlflow, uri)
    assert report.outcome is Outcome.INCONCLUSIVE and report.error is not None
    assert report.error.kind == ErrorKind.ERROR and detail in report.error.message, report.error


@pytest.mark.parametrize("credentials", [{"token": TOKEN}, {"username": USERNAME, "password": PASSWORD}],
                         ids=["bearer", "basic"])
@pytest.mark.parametrize("padding", [0, 262], ids=["short", "secret-across-the-length-limit"])
def test_server_text_echoing_the_credentials_never_reaches_the_gate_report(
        mlflow: FakeMlflow, credentials: dict[str, str], padding: int) -> None:
    # The Authorization header as sent (token, or base64 user:password), and the password itself when used.
    echoed = "invalid credentials: {authorization}" + (f" (password {PASSWORD})" if "password" in credentials else "")
    echo = {"error_code": "UNAUTHENTICATED", "message": "x" * padding + echoed}
    mlflow.answer(f"{ARTIFACTS}/golden/", 401, echo)
    report = gate_on(mlflow, "mlflow-artifacts:/golden/set.jsonl", **credentials)
    assert mlflow.authorizations[-1] in (f"Bearer {TOKEN}", f"Basic {BASIC_PAIR}")  # the echo holds a secret
    assert report.error is not None and report.error.kind == ErrorKind.FORBIDDEN
    if not padding:
        assert "invalid credentials: " in report.error.message and "***" in report.error.message
    assert_no_secret(report.error.message, report.reason, json.dumps(report.status))
    mlflow.answer(f"{ARTIFACTS}/golden/", 500, b"proxy says: " + b"y" * padding + b"{authorization}")
    report = gate_on(mlflow, "mlflow-artifacts:/golden/set.jsonl", **credentials)
    assert report.error is not None and report.error.kind == ErrorKind.UNAVAILABLE
    assert_no_secret(report.error.message, report.reason, json.dumps(report.status))


# --- the gate's evidence run -------------------------------------------------------------------------


def test_an_experiment_lookup_answer_without_the_experiment_is_malformed(mlflow: FakeMlflow) -> None:
    mlflow.answer(f"{API}/experiments/get-by-name", 200, {})
    with pytest.raises(SourceError) as caught:
        experiment_id_for(MlflowRest(access(mlflow)), "modelrollout-golden-gate")
    assert caught.value.kind is ErrorKind.ERROR
    assert "no experiment.experiment_id" in caught.value.message and "get-by-name" in caught.value.message


def golden_file(tmp_path: Path) -> tuple[bytes, str]:
    """30 samples the identity model gets all wrong: a gate that runs must FAIL."""
    count = 30
    features = np.zeros((count, 4))
    features[np.arange(count), np.arange(count) % 3] = 1.0
    labels = [CLASSES[(i + 1) % 3] for i in range(count)]
    path = tmp_path / "golden.jsonl"
    sha = write_jsonl_dataset(path, CLASSES, features, labels, [()] * count)
    return path.read_bytes(), sha


@pytest.mark.parametrize(("path", "status", "body", "logged"), [
    (f"{API}/experiments/get-by-name", 200, {}, "no experiment.experiment_id"),
    (f"{API}/experiments/get-by-name", 401, {"error_code": "UNAUTHENTICATED", "message": "no: {authorization}"},
     "HTTP 401"),
    (f"{API}/runs/create", 200, {"run": None}, "could not record gate evidence"),
], ids=["experiment-missing", "credentials-echoed", "run-null"])
def test_a_failed_evidence_run_is_logged_without_secrets_and_the_verdict_stands(
        mlflow: FakeMlflow, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        path: str, status: int, body: Any, logged: str) -> None:
    data, sha = golden_file(tmp_path)
    mlflow.answer(f"{ARTIFACTS}/golden/", 200, data)
    mlflow.answer(f"{API}/experiments/get-by-name", 200, {"experiment": {"experiment_id": "1"}})
    mlflow.answer(f"{API}/runs/search", 200, {})
    mlflow.answer(path, status, body)

    async def scenario() -> Any:
        async with model_server(identity_model()) as candidate:
            raw = {"model": {"name": "m", "version": "2"},
                   "registry": {"trackingUri": mlflow.url, "credentialsSecretRef": {"name": "mlflow-token"}},
                   "target": {"kserve": {"inferenceService": "m", "candidateUrl": candidate.url}},
                   "canary": {"steps": [{"setWeight": 10}]},
                   "goldenDataset": {"uri": "mlflow-artifacts:/golden/set.jsonl", "sha256": sha,
                                     "thresholds": {"minAccuracy": 0.9}}}
            spec = parse_spec(raw)
            runtime = RolloutRuntime({"metadata": {"namespace": "team-a", "name": "r", "uid": "u"}, "spec": raw},
                                     spec, client.ApiClient(), OperatorConfig(gate_hosts=("127.0.0.1",)))
            runtime._credentials = Credentials(token=TOKEN)  # as if read from the rollout's Secret
            action = RunGate(id="gate-1", candidate=VersionRef(version="2"), stable=None, dataset=spec.golden_dataset)
            return await runtime.measure_gate(action, None)

    with caplog.at_level(logging.WARNING, logger="controller.operator.runtime"):
        result = run(scenario())
    assert mlflow.authorizations and set(mlflow.authorizations) == {f"Bearer {TOKEN}"}
    assert result.error is None and result.request_id == "gate-1"
    assert Outcome.FAIL in {verdict.outcome for verdict in result.verdicts}
    assert "could not record gate evidence" in caplog.text and logged in caplog.text
    assert_no_secret(caplog.text)


# --- the registry adapter ----------------------------------------------------------------------------


GOOD_VERSION = {"name": "m", "version": "2", "status": "READY", "run_id": "abc", "source": "s3://b/m",
                "tags": [{"key": "owner", "value": "moderation"}, {"key": "empty"}]}


@pytest.mark.parametrize(("field", "value", "detail"), [
    ("run_id", 12345, "'run_id' as a number"),
    ("source", {"uri": "s3://b/m"}, "'source' as an object"),
    ("version", ["2"], "'version' as an array"),
    ("status", True, "'status' as a boolean"),
    ("tags", {"owner": "moderation"}, "'tags' as an object"),
    ("tags", [{"key": 1, "value": "x"}], "'tags' with an entry"),
    ("tags", [{"key": "owner", "value": {"team": "x"}}], "'tags' with an entry"),
    ("tags", ["owner"], "'tags' with an entry"),
])
def test_a_model_version_with_wrongly_typed_fields_is_refused_naming_the_field(
        mlflow: FakeMlflow, field: str, value: Any, detail: str) -> None:
    registry = MlflowRegistry(mlflow.url, Credentials(token=TOKEN), policy=RequestPolicy(timeout_seconds=3,
                                                                                          max_retries=0))
    mlflow.answer(f"{API}/runs/get", 200, {"run": {"data": {}, "inputs": {}}})
    mlflow.answer(f"{API}/model-versions/get", 200, {"model_version": GOOD_VERSION})
    good = registry.resolve("m", version="2")  # the well-typed answer, for contrast
    assert (good.run_id, good.source, good.tags) == ("abc", "s3://b/m", {"owner": "moderation", "empty": ""})
    mlflow.answer(f"{API}/model-versions/get", 200, {"model_version": {**GOOD_VERSION, field: value}})
    with pytest.raises(RegistryRequestError) as caught:
        registry.resolve("m", version="2")
    assert detail in caught.value.message and "version 2" in caught.value.message, caught.value
    assert caught.value.kind == "Error" and not caught.value.retryable


@pytest.mark.parametrize(("field", "value", "detail"), [
    ("version", "3", "answered with version '3', not the version asked"),
    ("version", "02", "answered with version '02', not the version asked"),
    ("version", 3, "answered with version '3', not the version asked"),
    ("version", True, "'version' as a boolean"),
    ("name", "other-model", "answered with name 'other-model', not the name asked"),
    ("name", {"x": 1}, "'name' as an object"),
    ("name", "{authorization}" + "x" * 10_000, "answered with name 'Bearer ***"),
])
def test_a_model_version_answered_for_another_version_or_model_is_refused(
        mlflow: FakeMlflow, field: str, value: Any, detail: str) -> None:
    """The engine would stage, or call stable, a version the spec never named."""
    registry = MlflowRegistry(mlflow.url, Credentials(token=TOKEN), policy=RequestPolicy(timeout_seconds=3,
                                                                                          max_retries=0))
    mlflow.answer(f"{API}/runs/get", 200, {"run": {"data": {}, "inputs": {}}})
    mlflow.answer(f"{API}/model-versions/get", 200, {"model_version": {**GOOD_VERSION, "version": 2}})
    assert registry.resolve("m", version="2").version == "2"  # a JSON number is the same version
    mlflow.answer(f"{API}/model-versions/get", 200, {"model_version": {**GOOD_VERSION, field: value}})
    with pytest.raises(RegistryRequestError) as caught:
        registry.resolve("m", version="2")
    assert detail in caught.value.message and "'m' version 2" in caught.value.message, caught.value
    assert len(caught.value.message) < 300 and not caught.value.retryable
    assert_no_secret(caught.value.message)


@pytest.mark.parametrize(("aliases", "detail"), [
    ([{"alias": "production", "version": "latest"}], "alias 'production' naming version 'latest', not a version"),
    ([{"alias": "production", "version": "07"}], "alias 'production' naming version '07', not a version"),
    ([{"alias": "production", "version": "0"}], "naming version '0', not a version number"),
    ([{"alias": "production", "version": "\u0667"}], "not a version number"),  # an Arabic-Indic 7: not ASCII
    ([{"alias": "other", "version": " 3"}], "alias 'other' naming version ' 3', not a version"),
    ([{"alias": "production", "version": "3"}, {"alias": "production", "version": "9"}],
     "lists alias 'production' twice, naming versions '3' and '9'"),
])
def test_an_alias_naming_no_single_version_number_is_refused(mlflow: FakeMlflow, aliases: Any, detail: str) -> None:
    registry = MlflowRegistry(mlflow.url, policy=RequestPolicy(timeout_seconds=3, max_retries=0))
    mlflow.answer(f"{API}/registered-models/get", 200, {"registered_model": {"name": "m", "aliases": aliases}})
    with pytest.raises(RegistryRequestError) as caught:
        registry.resolve_stable("m", "production")
    assert detail in caught.value.message and "registered_model 'm'" in caught.value.message, caught.value
    twice = [{"alias": "production", "version": "3"}, {"alias": "production", "version": "3"}]
    mlflow.answer(f"{API}/registered-models/get", 200, {"registered_model": {"name": "m", "aliases": twice}})
    assert registry.verify_alias("m", "production") == "3"  # the same version twice names one


@pytest.mark.parametrize("credentials", [Credentials(token=TOKEN), Credentials(username=USERNAME, password=PASSWORD)],
                         ids=["bearer", "basic"])
def test_an_error_code_that_is_no_mlflow_code_is_not_quoted(mlflow: FakeMlflow, credentials: Credentials) -> None:
    """A proxy echoing the request in error_code: only MLflow's own code names are quoted, and bounded."""
    registry = MlflowRegistry(mlflow.url, credentials, policy=RequestPolicy(timeout_seconds=3, max_retries=0))
    for code in ("{authorization}", "BAD {authorization}", "X" * 1_000_000):
        mlflow.answer(f"{API}/model-versions/get", 400, {"error_code": code, "message": "denied"})
        with pytest.raises(RegistryRequestError) as caught:
            registry.resolve("m", version="2")
        assert "HTTP 400: denied" in caught.value.message and len(caught.value.message) < 400, caught.value
        assert_no_secret(caught.value.message)
    mlflow.answer(f"{API}/model-versions/get", 400, {"error_code": "INVALID_PARAMETER_VALUE", "message": "bad"})
    with pytest.raises(RegistryRequestError, match="HTTP 400 INVALID_PARAMETER_VALUE: bad"):
        registry.resolve("m", version="2")


def test_a_model_version_without_a_status_is_not_read_as_ready(mlflow: FakeMlflow) -> None:
    registry = MlflowRegistry(mlflow.url, policy=RequestPolicy(timeout_seconds=3, max_retries=0))
    mlflow.answer(f"{API}/model-versions/get", 200,
                  {"model_version": {k: v for k, v in GOOD_VERSION.items() if k != "status"}})
    with pytest.raises(RegistryRequestError, match="has no 'status'"):
        registry.resolve("m", version="2")


@pytest.mark.parametrize("aliases", ["production", [{"alias": "production", "version": None}],
                                     [{"alias": "production"}], [["production", "2"]]])
def test_an_alias_list_of_the_wrong_shape_is_not_read_as_no_alias(mlflow: FakeMlflow, aliases: Any) -> None:
    registry = MlflowRegistry(mlflow.url, policy=RequestPolicy(timeout_seconds=3, max_retries=0))
    mlflow.answer(f"{API}/registered-models/get", 200, {"registered_model": {"name": "m", "aliases": aliases}})
    with pytest.raises(RegistryRequestError, match="aliases that are not"):
        registry.resolve_stable("m", "production")
    mlflow.answer(f"{API}/registered-models/get", 200, {"registered_model": {"name": "m"}})
    assert registry.resolve_stable("m", "production") is None  # no list at all: no alias set


# An MLflow before 2.3 has no aliases: registered-models/get lists none, as for a model with no alias set, and its
# alias endpoint is Flask's 404 page. Read as "no stable alias", every rollout took the first-rollout path.
NAME_TO_ESCAPE = "fraud?v2 &alias=x#1"


def alias_requests(fake: FakeMlflow) -> list[dict[str, list[str]]]:
    return [parse_qs(urlsplit(path).query) for path in fake.paths
            if urlsplit(path).path == f"{API}/registered-models/alias"]


@pytest.mark.parametrize("body", [
    b"<!doctype html>\n<html lang=en>\n<title>404 Not Found</title>\n<h1>Not Found</h1>\n",  # Flask's page
    b"", {"message": "not found"}, {"error_code": "ENDPOINT_NOT_FOUND", "message": "no such endpoint"},
], ids=["html", "empty", "json-without-error-code", "endpoint-not-found"])
def test_an_mlflow_without_the_alias_api_is_an_error_not_a_first_rollout(mlflow: FakeMlflow, body: Any) -> None:
    registry = MlflowRegistry(mlflow.url, policy=RequestPolicy(timeout_seconds=3, max_retries=0))
    mlflow.answer(f"{API}/registered-models/get", 200, {"registered_model": {"name": NAME_TO_ESCAPE}})
    mlflow.answer(f"{API}/registered-models/alias", 404, body)
    for read in (lambda: registry.resolve_stable(NAME_TO_ESCAPE, "production"),
                 lambda: registry.verify_alias(NAME_TO_ESCAPE, "production")):
        with pytest.raises(RegistryRequestError) as caught:
            read()
        assert caught.value.message.startswith(f"MLflow at {mlflow.url} has no model-alias API (MLflow >= 2.3 is "
                                               "needed): GET registered-models/alias answered HTTP 404"), caught.value
    # The name goes into the query escaped (it reads back whole), once per read.
    assert alias_requests(mlflow) == [{"name": [NAME_TO_ESCAPE], "alias": ["modelrollout-alias-probe"]}] * 2


@pytest.mark.parametrize(("status", "body"), [
    (400, {"error_code": "INVALID_PARAMETER_VALUE", "message": "Registered model alias x not found."}),  # MLflow's
    (404, NOT_FOUND),
    (200, {"model_version": {**GOOD_VERSION, "name": NAME_TO_ESCAPE}}),  # an alias set since the model was read
], ids=["mlflow", "resource-does-not-exist", "set-since"])
def test_a_model_listing_no_alias_on_an_mlflow_with_the_alias_api_has_no_stable_version(
        mlflow: FakeMlflow, status: int, body: Any) -> None:
    registry = MlflowRegistry(mlflow.url, policy=RequestPolicy(timeout_seconds=3, max_retries=0))
    mlflow.answer(f"{API}/registered-models/get", 200, {"registered_model": {"name": NAME_TO_ESCAPE}})
    mlflow.answer(f"{API}/registered-models/alias", status, body)
    assert registry.resolve_stable(NAME_TO_ESCAPE, "production") is None
    assert alias_requests(mlflow) == [{"name": [NAME_TO_ESCAPE], "alias": ["modelrollout-alias-probe"]}]


def test_the_alias_api_is_asked_only_when_no_alias_is_listed_and_its_other_refusals_stand(mlflow: FakeMlflow) -> None:
    registry = MlflowRegistry(mlflow.url, policy=RequestPolicy(timeout_seconds=3, max_retries=0))
    mlflow.answer(f"{API}/registered-models/get", 200,
                  {"registered_model": {"name": "m", "aliases": [{"alias": "other", "version": "3"}]}})
    mlflow.answer(f"{API}/registered-models/alias", 404, b"<html>Not Found</html>")
    assert registry.verify_alias("m", "production") is None and not alias_requests(mlflow)
    mlflow.answer(f"{API}/registered-models/get", 200, {"registered_model": {"name": "m"}})
    mlflow.answer(f"{API}/registered-models/alias", 403, {"error_code": "PERMISSION_DENIED", "message": "no"})
    with pytest.raises(RegistryAccessDenied):
        registry.verify_alias("m", "production")
    mlflow.answer(f"{API}/registered-models/alias", 400, {"error_code": "BAD_REQUEST", "message": "no"})
    with pytest.raises(RegistryRequestError, match="refused GET registered-models/alias with HTTP 400 BAD_REQUEST"):
        registry.verify_alias("m", "production")


def test_json_nested_past_the_parsers_depth_is_a_malformed_answer(mlflow: FakeMlflow) -> None:
    registry = MlflowRegistry(mlflow.url, policy=RequestPolicy(timeout_seconds=3, max_retries=0))
    mlflow.answer(f"{API}/registered-models/get", 200, b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(RegistryRequestError, match="not MLflow's JSON"):
        registry.verify_alias("m", "production")


def test_an_answer_too_large_is_refused_without_holding_it(mlflow: FakeMlflow) -> None:
    registry = MlflowRegistry(mlflow.url, policy=RequestPolicy(timeout_seconds=3, max_retries=0))
    mlflow.answer(f"{API}/registered-models/get", 200, b'{"registered_model": "' + b"x" * (5 * 1024 * 1024) + b'"}')
    with pytest.raises(RegistryRequestError, match="over 4 MiB"):
        registry.verify_alias("m", "production")


def test_a_server_that_drips_its_answer_is_cut_off_at_the_call_deadline() -> None:
    import socket
    import time

    from controller.registry import RegistryUnavailable

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    stop = threading.Event()

    def drip() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        body = json.dumps({"registered_model": {"name": "m", "aliases": []}}).encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode())
        for byte in body:  # one byte every 0.3 s: each wait is short, the whole answer takes 20 s
            if stop.is_set():
                break
            conn.sendall(bytes([byte]))
            time.sleep(0.3)
        conn.close()

    thread = threading.Thread(target=drip, daemon=True)
    thread.start()
    registry = MlflowRegistry(f"http://127.0.0.1:{listener.getsockname()[1]}",
                              policy=RequestPolicy(timeout_seconds=1, max_retries=0))
    started = time.monotonic()
    try:
        with pytest.raises(RegistryUnavailable, match="its answer took over 1s"):
            registry.verify_alias("m", "production")
        assert time.monotonic() - started < 5
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def test_a_token_no_http_header_can_carry_is_a_configuration_error() -> None:
    from controller.registry import RegistryConfigError

    data = {"token": base64.b64encode("s3cr3t€tok".encode()).decode()}
    with pytest.raises(RegistryConfigError, match="'token' holds a character an HTTP header cannot carry") as caught:
        Credentials.from_secret_data(data)
    assert "s3cr3t" not in str(caught.value)


def test_a_charset_python_does_not_know_is_read_as_utf8(mlflow: FakeMlflow) -> None:
    import socket

    body = json.dumps({"registered_model": {"name": "m", "aliases": [{"alias": "production", "version": "6"}]}})
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def answer() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf8mb4\r\n"
                     + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}".encode())
        conn.close()

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    registry = MlflowRegistry(f"http://127.0.0.1:{listener.getsockname()[1]}",
                              policy=RequestPolicy(timeout_seconds=3, max_retries=0))
    try:
        assert registry.verify_alias("m", "production") == "6"
    finally:
        thread.join(timeout=5)
        listener.close()


# A success to the probe with no version in it is no MLflow's answer: read as "no stable alias", the candidate took
# the first-rollout path, all traffic at once (review s34registry).
@pytest.mark.parametrize("body", [
    {}, {"model_version": "7"}, {"model_version": {"name": "another", "version": "1"}}, {"model_version": {}},
    {"model_version": {"foo": "bar"}}, {"model_version": {"name": NAME_TO_ESCAPE, "version": "seven"}},
    {"model_version": {"name": NAME_TO_ESCAPE, "version": None}}, {"model_version": {"version": "1"}},
], ids=["empty", "not-an-object", "another-model", "empty-version", "no-name", "version-not-a-number",
        "version-null", "name-left-out"])
def test_a_success_to_the_alias_probe_that_is_no_alias_version_is_an_error_not_a_first_rollout(
        mlflow: FakeMlflow, body: Any) -> None:
    registry = MlflowRegistry(mlflow.url, policy=RequestPolicy(timeout_seconds=3, max_retries=0))
    mlflow.answer(f"{API}/registered-models/get", 200, {"registered_model": {"name": NAME_TO_ESCAPE}})
    mlflow.answer(f"{API}/registered-models/alias", 200, body)
    with pytest.raises(RegistryRequestError, match="is this an MLflow tracking server"):
        registry.resolve_stable(NAME_TO_ESCAPE, "production")
