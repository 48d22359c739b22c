"""The MLflow registry adapter against a real `mlflow server`, and against small real HTTP servers for faults.

The shared contract (resolve, promote, roll back, idempotency) runs here on MLflow, with state set up and
observed through full mlflow's MlflowClient, independently of the adapter under test.
"""

from __future__ import annotations

import base64
import json
import socket
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.exceptions import MlflowException

from controller.devstack.mlflow_server import MlflowServer
from controller.registry import (
    Credentials,
    MlflowRegistry,
    RegistryAccessDenied,
    RegistryConfigError,
    RegistryError,
    RegistryRequestError,
    RegistryUnavailable,
    RequestPolicy,
    VersionNotFound,
)
from tests.http_stub import serving
from tests.unit.test_registry_rules import STABLE, RegistryContract

pytestmark = pytest.mark.integration

TOKEN = "tok-" + uuid.uuid4().hex  # unique, so finding it anywhere means it leaked
PASSWORD = "pw-" + uuid.uuid4().hex
BASIC_HEADER_VALUE = base64.b64encode(f"ops:{PASSWORD}".encode()).decode()
FAST = RequestPolicy(timeout_seconds=2.0, max_retries=1, backoff_seconds=0.05)


# --- the real MLflow ---------------------------------------------------------------------------------


@dataclass
class MlflowHarness:
    registry: MlflowRegistry
    client: MlflowClient
    experiment_id: str
    artifact_dir: Path

    def new_model(self, versions: int, *, version_tags: Mapping[str, str] | None = None) -> str:
        """A model whose versions come from a run with a tiny logged artifact, as a training job leaves them."""
        model = f"model-{uuid.uuid4().hex[:8]}"
        self.client.create_registered_model(model)
        run = self.client.create_run(self.experiment_id, tags={"mlflow.source.git.commit": "0123abcd"})
        self.client.log_inputs(run.info.run_id, datasets=[DatasetInput(
            Dataset(name="train", digest="300830b9", source_type="s3", source='{"uri": "s3://data/train.csv"}'),
            tags=[InputTag(key="mlflow.data.context", value="training")])])
        self.client.log_artifact(run.info.run_id, str(self.artifact_dir / "model.txt"), artifact_path="model")
        for _ in range(versions):
            self.client.create_model_version(model, f"{run.info.artifact_uri}/model", run_id=run.info.run_id,
                                             tags=dict(version_tags or {}), await_creation_for=0)
        return model

    def point_alias(self, model: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(model, alias, version)

    def alias_target(self, model: str, alias: str) -> str | None:
        try:
            return str(self.client.get_model_version_by_alias(model, alias).version)
        except MlflowException:
            return None

    def version_tags(self, model: str, version: str) -> dict[str, str]:
        return dict(self.client.get_model_version(model, version).tags)


@pytest.fixture(scope="module")
def mlflow_setup(mlflow_server: MlflowServer,
                 tmp_path_factory: pytest.TempPathFactory) -> tuple[MlflowClient, str, Path]:
    client = MlflowClient(tracking_uri=mlflow_server.url, registry_uri=mlflow_server.url)
    experiment_id = client.create_experiment(f"registry-{uuid.uuid4().hex[:8]}")
    artifact_dir = tmp_path_factory.mktemp("registry-artifacts")
    (artifact_dir / "model.txt").write_text("a tiny model\n")
    return client, experiment_id, artifact_dir


class TestMlflowRegistry(RegistryContract):
    @pytest.fixture
    def harness(self, mlflow_server: MlflowServer, mlflow_setup: tuple[MlflowClient, str, Path]) -> MlflowHarness:
        client, experiment_id, artifact_dir = mlflow_setup
        return MlflowHarness(MlflowRegistry(mlflow_server.url, policy=FAST), client, experiment_id, artifact_dir)

    def test_resolve_reports_run_source_and_lineage(self, harness: MlflowHarness) -> None:
        model = harness.new_model(1, version_tags={"lineage.training_job": "job-42"})
        resolved = harness.registry.resolve(model, version="1")
        version = harness.client.get_model_version(model, "1")
        assert resolved.run_id == version.run_id
        assert resolved.source == version.source
        assert resolved.source is not None and resolved.source.startswith("mlflow-artifacts:/")
        assert resolved.lineage == {
            "input.0.name": "train", "input.0.digest": "300830b9", "input.0.source_type": "s3",
            "input.0.source": '{"uri": "s3://data/train.csv"}', "input.0.context": "training",
            "mlflow.source.git.commit": "0123abcd", "lineage.training_job": "job-42"}

    def test_a_version_whose_run_was_deleted_still_resolves(self, harness: MlflowHarness) -> None:
        model = harness.new_model(1)
        run_id = harness.client.get_model_version(model, "1").run_id
        harness.client.delete_run(run_id)  # soft delete: still readable
        assert harness.registry.resolve(model, version="1").run_id == run_id

    def test_the_operator_observes_the_version_it_rolls_back_after_the_spec_moved_on(
            self, harness: MlflowHarness, mlflow_server: MlflowServer) -> None:
        """While rolling back version 1 with the spec already naming 2, the rejection tags of 1 are read
        from the registry (the engine confirms the tag from them), and a deleted 1 is reported as gone."""
        from controller.api.spec import parse_spec
        from controller.api.status import ModelRolloutStatus, Phase, VersionRef
        from controller.operator.runtime import OperatorConfig, RolloutRuntime
        from tests.unit.test_api import example

        model = harness.new_model(2)
        harness.registry.tag_rejected(model, "1", "nsfw-rate failed", {}, "ns/r")
        spec = example()
        spec["model"] = {"name": model, "version": "2", "stableAlias": "production"}
        spec["registry"] = {"trackingUri": mlflow_server.url}
        obj = {"metadata": {"name": "r", "namespace": "ns"}, "spec": spec}
        runtime = RolloutRuntime(obj, parse_spec(spec), None, OperatorConfig())  # type: ignore[arg-type]
        rolling_back = ModelRolloutStatus(phase=Phase.ROLLING_BACK, candidate=VersionRef(version="1"))
        seen = runtime.observe_registry(rolling_back)
        assert seen.error is None and seen.candidate is not None and seen.candidate.version == "2"
        assert seen.rolled_back is not None and seen.rolled_back.version == "1" and not seen.rolled_back_gone
        assert seen.rolled_back.tags.get("modelrollout.rejected") == "true"
        # Not rolling back, or rolling back the version the spec names: nothing more is read.
        assert runtime.observe_registry(ModelRolloutStatus(phase=Phase.PROGRESSING,
                                                           candidate=VersionRef(version="1"))).rolled_back is None
        promoting = ModelRolloutStatus(phase=Phase.PROMOTING, candidate=VersionRef(version="1"))
        assert not runtime.observe_registry(promoting).candidate_gone  # the spec moved on, 1 still exists
        harness.client.delete_model_version(model, "1")
        gone = runtime.observe_registry(rolling_back)
        assert gone.rolled_back is None and gone.rolled_back_gone and gone.candidate_gone
        # Promoting a candidate the spec no longer resolves to (an alias cleared): whether it still exists is read.
        promoted_gone = runtime.observe_registry(promoting)
        assert promoted_gone.candidate_gone and promoted_gone.rolled_back is None and not promoted_gone.rolled_back_gone

    def test_per_call_policy_ignores_mlflow_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        # MLflow's defaults (7 retries, 120 s) would hold a reconcile for minutes; the policy is per adapter.
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "10")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "100")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "600")
        started = time.monotonic()
        with pytest.raises(RegistryUnavailable):
            MlflowRegistry(f"http://127.0.0.1:{_free_port()}", policy=FAST).resolve("model", version="1")
        assert time.monotonic() - started < 3

    def test_a_version_source_mlflow_accepts_but_status_cannot_hold_is_refused_naming_it(
            self, harness: MlflowHarness) -> None:
        model = harness.new_model(0)
        fits = "s3://b/" + "x" * (8 * 1024 - 7)
        harness.client.create_model_version(model, fits, await_creation_for=0)
        harness.client.create_model_version(model, "s3://b/" + "x" * 2_000_000, await_creation_for=0)  # accepted
        assert harness.registry.resolve(model, version="1").source == fits
        with pytest.raises(RegistryRequestError, match=r"'source' of 2000007 characters, over 8192") as caught:
            harness.registry.resolve(model, version="2")
        assert len(str(caught.value)) < 400

    def test_a_tracking_uri_that_redirects_fails_the_first_read_and_moves_nothing(
            self, harness: MlflowHarness, mlflow_server: MlflowServer) -> None:
        """An ingress redirecting to the real MLflow: followed, reads work and the promotion's POST arrives as a GET
        (HTTP 405). Not followed, the resolve already says where to point trackingUri."""
        model = harness.new_model(2)
        harness.point_alias(model, STABLE, "1")
        methods: list[str] = []

        class Front(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                methods.append(self.command)
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(301)
                self.send_header("Location", f"{mlflow_server.url}{self.path}")
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = do_DELETE = _answer

            def log_message(self, format: str, *args: object) -> None:
                pass

        with serving(ThreadingHTTPServer(("127.0.0.1", 0), Front)) as front:
            registry = MlflowRegistry(front, Credentials(token=TOKEN), policy=FAST)
            for attempt in (lambda: registry.resolve(model, version="2"),
                            lambda: registry.promote(model, STABLE, "2", "ns/r")):
                with pytest.raises(RegistryRequestError) as caught:
                    attempt()
                assert f"HTTP 301, a redirect to '{mlflow_server.url}'" in str(caught.value)
                assert "set the registry's trackingUri" in str(caught.value)
                _assert_no_secret(caught.value)
        assert methods == ["GET", "GET"]  # the promotion stopped at its first read
        assert harness.alias_target(model, STABLE) == "1" and "modelrollout.previous_version" not in \
            harness.version_tags(model, "2")


# --- credentials, against MLflow's own basic-auth app --------------------------------------------------

ADMIN = ("admin", "admin-" + uuid.uuid4().hex)
READER = ("reader", "reader-" + uuid.uuid4().hex)


@pytest.fixture(scope="module")
def authenticating_mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """`mlflow server --app-name basic-auth`: refuses anonymous requests, default permission READ, and one
    non-admin user who may therefore read everything and change nothing."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-auth"), admin=ADMIN)
    server.start()
    try:
        api = f"{server.url}/api/2.0/mlflow"
        created = requests.post(f"{api}/users/create", json={"username": READER[0], "password": READER[1]},
                                auth=ADMIN, timeout=30)
        assert created.status_code == 200, created.text
        yield server
    finally:
        server.stop()


def _admin_model(server: MlflowServer) -> str:
    """A model with version 1, registered by the admin."""
    api, model = f"{server.url}/api/2.0/mlflow", f"auth-{uuid.uuid4().hex[:8]}"
    for path, body in (("registered-models/create", {"name": model}),
                       ("model-versions/create", {"name": model, "source": "s3://models/auth/1"})):
        answer = requests.post(f"{api}/{path}", json=body, auth=ADMIN, timeout=30)
        assert answer.status_code == 200, answer.text
    return model


def test_basic_credentials_are_accepted_by_a_real_authenticating_mlflow(authenticating_mlflow: MlflowServer) -> None:
    model = _admin_model(authenticating_mlflow)
    registry = MlflowRegistry(authenticating_mlflow.url, Credentials(username=ADMIN[0], password=ADMIN[1]),
                              policy=FAST)
    assert registry.resolve(model, version="1").version == "1"
    registry.promote(model, STABLE, "1", "moderation/nsfw")
    assert registry.verify_alias(model, STABLE) == "1"


@pytest.mark.parametrize("credentials", [Credentials(username=ADMIN[0], password="wrong-" + PASSWORD), None,
                                         Credentials(token=TOKEN)],
                         ids=["wrong-password", "anonymous", "bearer-token-it-does-not-accept"])
def test_credentials_a_real_mlflow_refuses_are_access_denied(authenticating_mlflow: MlflowServer,
                                                             credentials: Credentials | None) -> None:
    model = _admin_model(authenticating_mlflow)
    registry = MlflowRegistry(authenticating_mlflow.url, credentials, policy=FAST)
    with pytest.raises(RegistryAccessDenied, match="HTTP 401") as caught:
        registry.resolve(model, version="1")
    assert caught.value.kind == "Forbidden" and not caught.value.retryable
    _assert_no_secret(caught.value)


def test_a_user_who_may_only_read_resolves_but_moving_the_alias_is_access_denied(
        authenticating_mlflow: MlflowServer) -> None:
    model = _admin_model(authenticating_mlflow)
    reader = MlflowRegistry(authenticating_mlflow.url, Credentials(username=READER[0], password=READER[1]),
                            policy=FAST)
    assert reader.resolve(model, version="1").version == "1"
    with pytest.raises(RegistryAccessDenied, match="HTTP 403") as caught:
        reader.promote(model, STABLE, "1", "moderation/nsfw")
    assert READER[1] not in str(caught.value) and READER[1] not in repr(caught.value)
    admin = MlflowRegistry(authenticating_mlflow.url, Credentials(username=ADMIN[0], password=ADMIN[1]), policy=FAST)
    assert admin.verify_alias(model, STABLE) is None  # nothing half-written


# --- faults and credentials, on small real HTTP servers ----------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class FakeMlflow:
    """A real HTTP server on loopback that answers every request with a scripted status and body."""

    status: int = 404
    body: str = json.dumps({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "Model Version not found"})
    delay_seconds: float = 0.0
    requests: list[dict[str, str]] = field(default_factory=list)
    url: str = ""

    def handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                fake.requests.append({"method": self.command, "path": self.path,
                                      "authorization": self.headers.get("Authorization", "")})
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                time.sleep(fake.delay_seconds)
                payload = fake.body.encode()
                try:
                    self.send_response(fake.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting, as the timeout test intends

            do_GET = do_POST = do_DELETE = _answer

            def log_message(self, format: str, *args: object) -> None:
                pass  # keep test output quiet

        return Handler


@pytest.fixture
def fake_mlflow() -> Iterator[FakeMlflow]:
    fake = FakeMlflow()
    server = ThreadingHTTPServer(("127.0.0.1", 0), fake.handler())
    server.daemon_threads = True
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    with serving(server):
        yield fake


def test_unreachable_registry_is_unavailable_quickly() -> None:
    registry = MlflowRegistry(f"http://127.0.0.1:{_free_port()}", Credentials(token=TOKEN), policy=FAST)
    started = time.monotonic()
    with pytest.raises(RegistryUnavailable) as caught:
        registry.resolve("nsfw-classifier", version="7")
    assert time.monotonic() - started < 2
    assert "connection refused" in str(caught.value)
    assert caught.value.retryable and caught.value.kind == "Unavailable"
    _assert_no_secret(caught.value)


def test_bearer_token_is_sent(fake_mlflow: FakeMlflow) -> None:
    registry = MlflowRegistry(fake_mlflow.url, Credentials(token=TOKEN), policy=FAST)
    with pytest.raises(VersionNotFound) as caught:
        registry.resolve("nsfw-classifier", version="7")
    assert fake_mlflow.requests[0]["authorization"] == f"Bearer {TOKEN}"
    assert fake_mlflow.requests[0]["path"].startswith("/api/2.0/mlflow/model-versions/get?")
    _assert_no_secret(caught.value)


def test_basic_credentials_are_sent(fake_mlflow: FakeMlflow) -> None:
    registry = MlflowRegistry(fake_mlflow.url, Credentials(username="ops", password=PASSWORD), policy=FAST)
    with pytest.raises(VersionNotFound):
        registry.verify_alias("nsfw-classifier", STABLE)
    assert fake_mlflow.requests[0]["authorization"] == f"Basic {BASIC_HEADER_VALUE}"


def test_each_adapter_sends_its_own_credentials(fake_mlflow: FakeMlflow) -> None:
    # Two rollouts in one process with different Secrets: nothing may leak from one to the other.
    first = MlflowRegistry(fake_mlflow.url, Credentials(token="first-token"), policy=FAST)
    second = MlflowRegistry(fake_mlflow.url, None, policy=FAST)
    for registry in (first, second, first):
        with pytest.raises(VersionNotFound):
            registry.verify_alias("nsfw-classifier", STABLE)
    assert [r["authorization"] for r in fake_mlflow.requests] == ["Bearer first-token", "", "Bearer first-token"]


def test_server_errors_are_retried_a_little_then_unavailable(fake_mlflow: FakeMlflow) -> None:
    fake_mlflow.status = 503
    fake_mlflow.body = json.dumps({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "database is locked"})
    registry = MlflowRegistry(fake_mlflow.url, Credentials(token=TOKEN), policy=FAST)
    with pytest.raises(RegistryUnavailable, match=r"HTTP 503.*database is locked") as caught:
        registry.resolve("nsfw-classifier", alias=STABLE)
    assert len(fake_mlflow.requests) == 1 + FAST.max_retries
    _assert_no_secret(caught.value)


def test_slow_registry_times_out(fake_mlflow: FakeMlflow) -> None:
    fake_mlflow.delay_seconds = 1.0
    policy = RequestPolicy(timeout_seconds=0.2, max_retries=0)
    started = time.monotonic()
    # The try's own timeout and the call's deadline (one try: the same 0.2 s) end it together: either says so.
    with pytest.raises(RegistryUnavailable, match=r"no answer within 0.2s|its answer took over 0.2s"):
        MlflowRegistry(fake_mlflow.url, policy=policy).resolve("nsfw-classifier", version="7")
    assert time.monotonic() - started < 1.0


def test_refused_credentials_are_access_denied_and_redacted(fake_mlflow: FakeMlflow) -> None:
    # A server (or proxy) that echoes the credential back must not get it into our message.
    fake_mlflow.status = 401
    fake_mlflow.body = json.dumps({"error_code": "UNAUTHENTICATED", "message": f"bad token {TOKEN}"})
    registry = MlflowRegistry(fake_mlflow.url, Credentials(token=TOKEN), policy=FAST)
    expected = r"HTTP 401 \(credentials: bearer token\): bad token \*\*\*"
    with pytest.raises(RegistryAccessDenied, match=expected) as caught:
        registry.promote("nsfw-classifier", STABLE, "7", "moderation/nsfw")
    assert caught.value.kind == "Forbidden" and not caught.value.retryable
    _assert_no_secret(caught.value)


@pytest.mark.parametrize(("status", "body"), [
    (404, "<html>Not Found</html>"),
    (200, "<html>login</html>"),
    (400, json.dumps({"error_code": "INVALID_PARAMETER_VALUE", "message": "bad"})),
])
def test_answers_that_are_not_mlflow_are_request_errors(fake_mlflow: FakeMlflow, status: int, body: str) -> None:
    fake_mlflow.status, fake_mlflow.body = status, body
    with pytest.raises(RegistryRequestError):
        MlflowRegistry(fake_mlflow.url, Credentials(token=TOKEN), policy=FAST).resolve("m", version="1")


@pytest.mark.parametrize("uri", [
    "ftp://mlflow.mlops:5000", "mlflow.mlops:5000", "http://", f"http://ops:{PASSWORD}@mlflow.mlops:5000",
    f"https://mlflow.mlops/?token={PASSWORD}", f"http://mlflow.mlops:99999/{PASSWORD}",
])
def test_tracking_uri_must_be_plain_http(uri: str) -> None:
    with pytest.raises(RegistryConfigError) as caught:
        MlflowRegistry(uri)
    _assert_no_secret(caught.value)


def test_secrets_never_appear_in_repr_or_errors(fake_mlflow: FakeMlflow) -> None:
    credentials = Credentials(token=TOKEN)
    registry = MlflowRegistry(fake_mlflow.url, credentials, policy=FAST)
    basic = MlflowRegistry(fake_mlflow.url, Credentials(username="ops", password=PASSWORD), policy=FAST)
    for shown in (registry, basic, credentials, Credentials(username="ops", password=PASSWORD)):
        _assert_no_secret(shown)
    assert repr(registry) == f"MlflowRegistry(tracking_uri={fake_mlflow.url!r}, auth='bearer token')"
    errors: list[RegistryError] = []
    for status in (404, 401, 500):
        fake_mlflow.status = status
        for adapter, echoed in ((registry, f"Bearer {TOKEN}"), (basic, f"{PASSWORD} Basic {BASIC_HEADER_VALUE}")):
            fake_mlflow.body = json.dumps({"error_code": "X", "message": f"echo {echoed}"})
            with pytest.raises(RegistryError) as caught:
                adapter.rollback("m", STABLE, "2", "1", "reason", "evidence", "ns/name")
            errors.append(caught.value)
    assert len(errors) == 6
    for error in errors:
        _assert_no_secret(error)
    import os

    assert not any(TOKEN in value or PASSWORD in value for value in os.environ.values())


def _assert_no_secret(shown: object) -> None:
    import traceback

    texts = [repr(shown), str(shown)]
    if isinstance(shown, BaseException):
        texts.append("".join(traceback.format_exception(shown)))
    for text in texts:
        assert TOKEN not in text and PASSWORD not in text and BASIC_HEADER_VALUE not in text, text
