"""Review s31registry against a real `mlflow server` (MLflow 3):

1. A version registered the MLflow 3 way (a logged model: source models:/m-<id>) is refused at resolve time with the
   default --storage-uri-template, saying to set it; {download_uri} gives MLflow's get-download-uri.
2. A promotion whose stable-alias write fails (a proxy answering 503 to it) leaves no `<alias>-previous` on
   production and no promoted.* tags; killed at any write and sent again, it ends as a clean one.
3. A model name with ' or a trailing backslash: the gate's next run still ends the abandoned one and records.
4. promote() with the stable version the rollout found: a human's move since is refused, nothing written.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from mlflow import MlflowClient

from controller.api.spec import parse_spec
from controller.api.status import ModelRolloutStatus, VersionRef
from controller.devstack.mlflow_server import MlflowServer
from controller.gate import MlflowAccess, record_gate_evidence
from controller.gate.errors import SourceError
from controller.gate.evidence import EXPERIMENT_NAME
from controller.gate.mlflow_access import MlflowRest
from controller.operator.runtime import OperatorConfig, RolloutRuntime
from controller.registry import MlflowRegistry, RegistryUnavailable, RequestPolicy
from controller.registry import errors as registry_errors
from controller.verdict import Outcome
from tests.http_stub import serving
from tests.integration.test_gate_evidence_abandoned import report

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "nsfw-classifier.yaml"
FAST = RequestPolicy(timeout_seconds=3.0, max_retries=0, backoff_seconds=0.05)
STABLE, ROLLOUT = "production", "ns/r"
AT = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def client(mlflow_server: MlflowServer) -> MlflowClient:
    return MlflowClient(tracking_uri=mlflow_server.url, registry_uri=mlflow_server.url)


def new_model(client: MlflowClient, versions: int = 3, *, logged_models: bool = False) -> str:
    """A model with `versions` versions: from a run's artifacts, or MLflow 3 logged models (source models:/m-<id>)."""
    name = f"s31-{uuid.uuid4().hex[:8]}"
    client.create_registered_model(name)
    experiment = client.create_experiment(f"s31-{uuid.uuid4().hex[:8]}")
    for _ in range(versions):
        if logged_models:
            model = client.create_logged_model(experiment, name="model")
            client.create_model_version(name, f"models:/{model.model_id}", model_id=model.model_id,
                                        await_creation_for=0)
        else:
            run = client.create_run(experiment)
            client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id,
                                        await_creation_for=0)
    return name


def state(client: MlflowClient, name: str) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    model = client.get_registered_model(name)
    versions = client.search_model_versions(f"name = '{name}'")
    return dict(model.aliases), {str(v.version): dict(v.tags) for v in versions}


def runtime(url: str, name: str, template: str | None = None) -> RolloutRuntime:
    obj = yaml.safe_load(EXAMPLE.read_text())
    obj["metadata"]["namespace"] = "ns"
    obj["spec"]["model"] = {"name": name, "version": "2", "stableAlias": STABLE}
    obj["spec"]["registry"] = {"trackingUri": url}
    config = OperatorConfig(storage_uri_template=template)
    return RolloutRuntime(obj, parse_spec(obj["spec"]), None, config)  # type: ignore[arg-type]


# --- 1 ---------------------------------------------------------------------------------------------------


def test_an_mlflow3_logged_model_is_refused_with_the_default_template_and_download_uri_serves_it(
        mlflow_server: MlflowServer, client: MlflowClient) -> None:
    name = new_model(client, 2, logged_models=True)
    client.set_registered_model_alias(name, STABLE, "1")
    source = client.get_model_version(name, "2").source
    assert source.startswith("models:/m-")
    observed = runtime(mlflow_server.url, name).observe_registry(ModelRolloutStatus())
    # An observation the engine applies when it resolves the candidate (Pending, RegistryInvalid), not an error.
    assert observed.error is None and observed.unloadable is not None
    assert observed.unloadable.startswith("candidate version 2's source is a models: URI"), observed.unloadable
    assert "--storage-uri-template (chart value controller.storageUriTemplate) is not set" in observed.unloadable

    # Set to {download_uri}: resolved, and staged with where MLflow keeps the logged model's files.
    chosen = runtime(mlflow_server.url, name, "{download_uri}")
    observed = chosen.observe_registry(ModelRolloutStatus())
    assert observed.error is None and observed.unloadable is None
    assert observed.candidate is not None and observed.candidate.source == source
    answer = requests.get(f"{mlflow_server.url}/api/2.0/mlflow/model-versions/get-download-uri",
                          params={"name": name, "version": "2"}, timeout=10).json()["artifact_uri"]
    model_id = source.removeprefix("models:/")
    assert model_id in answer and answer.endswith("/artifacts")
    assert chosen.storage_uri(VersionRef("2", source=source)) == answer
    assert MlflowRegistry(mlflow_server.url).download_uri(name, "2") == answer


# --- 2 ---------------------------------------------------------------------------------------------------


@pytest.fixture
def failing_proxy(mlflow_server: MlflowServer) -> Iterator[str]:
    """MLflow behind a proxy answering 503 to every POST that moves @production (and only those)."""
    upstream = mlflow_server.url

    class Proxy(BaseHTTPRequestHandler):
        def _forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.command == "POST" and self.path.endswith("registered-models/alias") \
                    and json.loads(body or b"{}").get("alias") == STABLE:
                self._answer(503, b'{"error_code": "TEMPORARILY_UNAVAILABLE"}')
                return
            answer = requests.request(self.command, upstream + self.path, data=body or None, timeout=10,
                                      headers={"Content-Type": self.headers.get("Content-Type", "application/json")})
            self._answer(answer.status_code, answer.content)

        def _answer(self, code: int, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_DELETE = _forward

        def log_message(self, *_: Any) -> None:
            pass

    with serving(ThreadingHTTPServer(("127.0.0.1", 0), Proxy)) as url:
        yield url


@pytest.mark.parametrize("previous", [None, "3"])
def test_a_promotion_whose_alias_write_fails_leaves_no_way_back_on_production_nor_a_promotion_record(
        client: MlflowClient, failing_proxy: str, previous: str | None) -> None:
    name = new_model(client)
    client.set_registered_model_alias(name, STABLE, "1")
    if previous:
        client.set_registered_model_alias(name, f"{STABLE}-previous", previous)
    with pytest.raises(RegistryUnavailable, match="HTTP 503"):
        MlflowRegistry(failing_proxy, policy=FAST).promote(name, STABLE, "2", ROLLOUT, promoted_at=AT)
    aliases, tags = state(client, name)
    assert aliases == {STABLE: "1", **({f"{STABLE}-previous": previous} if previous else {})}
    assert not any(key.startswith("modelrollout.promoted") for key in tags["2"]), tags["2"]


class KilledAfter(MlflowRegistry):
    """Dies (as a SIGKILLed operator) before its write number `budget` reaches MLflow."""

    budget: int | None = None

    def _call(self, method: str, endpoint: str, payload: Mapping[str, str]) -> dict[str, Any]:
        if method != "GET" and self.budget is not None:
            if self.budget == 0:
                raise SystemExit("killed")
            self.budget -= 1
        return super()._call(method, endpoint, payload)


@pytest.mark.parametrize("previous", [None, "3"])
def test_a_promotion_killed_at_any_write_and_sent_again_ends_as_a_clean_one(
        mlflow_server: MlflowServer, client: MlflowClient, previous: str | None) -> None:
    def fresh() -> str:
        name = new_model(client)
        client.set_registered_model_alias(name, STABLE, "1")
        if previous:
            client.set_registered_model_alias(name, f"{STABLE}-previous", previous)
        return name

    clean = fresh()
    MlflowRegistry(mlflow_server.url).promote(clean, STABLE, "2", ROLLOUT, promoted_at=AT)
    expected = state(client, clean)
    assert expected[0] == {STABLE: "2", f"{STABLE}-previous": "1"}
    assert expected[1]["2"]["modelrollout.promoted.time"] == "2026-01-05T09:00:00Z"
    for budget in range(5):  # the previous-version tag, the alias, -previous, promoted.rollout, promoted.time
        name = fresh()
        registry = KilledAfter(mlflow_server.url, policy=FAST)
        registry.budget = budget
        with pytest.raises(SystemExit):
            registry.promote(name, STABLE, "2", ROLLOUT, promoted_at=AT)
        if budget <= 1:  # killed before the alias moved: nothing claims a promotion, no way back on production
            aliases, tags = state(client, name)
            assert aliases.get(f"{STABLE}-previous") == previous and aliases[STABLE] == "1", (budget, aliases)
            assert not any(key.startswith("modelrollout.promoted") for key in tags["2"]), (budget, tags["2"])
        registry.budget = None
        registry.promote(name, STABLE, "2", ROLLOUT, promoted_at=AT)  # the engine sends it again
        assert state(client, name) == expected, budget


# --- 4 ---------------------------------------------------------------------------------------------------


def test_a_stable_alias_moved_after_the_rollout_read_it_is_not_overwritten(
        mlflow_server: MlflowServer, client: MlflowClient) -> None:
    name = new_model(client)
    client.set_registered_model_alias(name, STABLE, "1")  # what the engine observed
    client.set_registered_model_alias(name, STABLE, "3")  # a human, right after
    before = state(client, name)
    with pytest.raises(registry_errors.StableAliasMoved, match="names version 3, not version 1") as caught:
        MlflowRegistry(mlflow_server.url).promote(name, STABLE, "2", ROLLOUT, promoted_at=AT, expected="1")
    assert caught.value.kind == "Conflict"
    assert state(client, name) == before


# --- 3 ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("base", ["o'brien", "team\\", "it's\\"])
def test_a_model_name_with_a_quote_or_a_trailing_backslash_keeps_its_gate_evidence(
        mlflow_server: MlflowServer, base: str) -> None:
    access = MlflowAccess(mlflow_server.url)
    rest = MlflowRest(access)
    uid = uuid.uuid4().hex
    name = f"s31ev-{uid[:6]}-{base}"
    rest.call("POST", "/api/2.0/mlflow/registered-models/create", body={"name": name})
    for _ in range(2):
        rest.call("POST", "/api/2.0/mlflow/model-versions/create", body={"name": name, "source": "s3://b/m"})

    def runs() -> dict[str, dict[str, str]]:
        experiment = rest.call("GET", "/api/2.0/mlflow/experiments/get-by-name",
                               params={"experiment_name": EXPERIMENT_NAME})["experiment"]["experiment_id"]
        found = rest.call("POST", "/api/2.0/mlflow/runs/search", body={
            "experiment_ids": [experiment], "max_results": 1000,
            "filter": f"tags.`modelrollout.gate.rollout` = 'ns/{uid[:8]}'"}).get("runs", [])
        return {tags["modelrollout.gate.request_id"]: {"status": run["info"]["status"], **tags}
                for run in found if (tags := {t["key"]: t["value"] for t in run["data"].get("tags", [])})
                .get("modelrollout.gate.model") == name}

    first, second = f"{uid}/1:gate-1", f"{uid}/1:gate-2"
    with pytest.raises(SourceError, match="dropped"):  # killed once its run exists
        record_gate_evidence(access, report(Outcome.PASS), model_name=name, candidate_version="2",
                             stable_version="1", rollout=f"ns/{uid[:8]}", request_id=first,
                             dropped=lambda: first in runs())
    record_gate_evidence(access, report(Outcome.FAIL), model_name=name, candidate_version="2", stable_version="1",
                         rollout=f"ns/{uid[:8]}", request_id=second)
    found = runs()
    assert {request: run["status"] for request, run in found.items()} == {first: "KILLED", second: "FINISHED"}, found
    assert found[second]["modelrollout.gate.outcome"] == "fail"
    version_tags = rest.call("GET", "/api/2.0/mlflow/model-versions/get",
                             params={"name": name, "version": "2"})["model_version"].get("tags", [])
    assert any(tag["key"].startswith("modelrollout.gate") for tag in version_tags), version_tags


# --- s34: the alias pointed back after this promotion moved it (review s34registry) ------------------------------


def test_a_promotion_sent_again_after_its_alias_was_pointed_back_does_not_move_it_again(
        mlflow_server: MlflowServer, client: MlflowClient) -> None:
    name = new_model(client)
    client.set_registered_model_alias(name, STABLE, "1")
    MlflowRegistry(mlflow_server.url).promote(name, STABLE, "2", ROLLOUT, promoted_at=AT, expected="1")
    client.set_registered_model_alias(name, STABLE, "1")  # on-call, before the killed operator saw the move
    before = state(client, name)
    with pytest.raises(registry_errors.StableAliasMoved,
                       match="names version 1 again after this promotion moved it to 2") as caught:
        MlflowRegistry(mlflow_server.url).promote(name, STABLE, "2", ROLLOUT, promoted_at=AT, expected="1")
    assert caught.value.kind == "Conflict"
    assert state(client, name) == before
    # Another promotion (a retry's new start) is a new decision, and moves it.
    MlflowRegistry(mlflow_server.url).promote(name, STABLE, "2", ROLLOUT, promoted_at=AT.replace(hour=11),
                                              expected="1")
    assert state(client, name)[0][STABLE] == "2"
