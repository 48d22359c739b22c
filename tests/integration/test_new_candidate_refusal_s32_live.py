"""Review s32seldon MEDIUM 1, end to end (real kube-apiserver, real MLflow, the operator as its own process, the
serving stand-ins): the operator run without --storage-uri-template, a rollout paused at 10% with loadable s3:// sources
is superseded by a version whose source is MLflow 3's models:/m-<id>. Before, the refusal was skipped while the old
rollout was in flight: its rollback ended and the new version was resolved and staged in the same decision, putting
models:/m-<id> on the target (it would only fail at progressDeadline, blaming the target). Now the old version is
rolled back and the new one waits in Pending, RegistryAvailable False (RegistryInvalid), nothing staged: KServe and
Seldon v1 alike (the path is the runtime's and the engine's)."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from mlflow import MlflowClient

from controller.devstack.controlplane import ControlPlane
from controller.devstack.scenario import STABLE_ALIAS, Scenario
from controller.operator.kubeapi import load_client_config
from tests.integration.operator_process import OperatorProcess, get_rollout
from tests.integration.test_rollout_kserve import apply

pytestmark = pytest.mark.integration

MLFLOW3 = "models:/m-"
OBJECTS = {"kserve": ("serving.kserve.io", "v1beta1", "inferenceservices"),
           "seldonDeployment": ("machinelearning.seldon.io", "v1", "seldondeployments")}


def stable_uri(kind: str, obj: dict[str, Any]) -> str:
    if kind == "kserve":
        return str(obj["spec"]["predictor"]["model"]["storageUri"])
    return str(next(p["graph"]["modelUri"] for p in obj["spec"]["predictors"] if p["name"] == "main"))


def refused(status: dict[str, Any]) -> bool:
    return status.get("phase") == "Pending" and any(
        c.get("type") == "RegistryAvailable" and c.get("reason") == "RegistryInvalid"
        for c in status.get("conditions") or [])


@pytest.mark.parametrize("kind", ["kserve", "seldonDeployment"])
def test_a_version_only_mlflow_resolves_replacing_one_mid_canary_waits_in_pending_after_its_rollback(
        kind: str, kubeconfig: Path, tmp_path: Path, control_plane: ControlPlane, seldon_scenario: Any,
        mlflow_server: Any) -> None:
    scenario: Scenario = seldon_scenario(kind, "clean")
    name, namespace = scenario.model_name, scenario.namespace
    custom = client.CustomObjectsApi(load_client_config(str(control_plane.admin_kubeconfig)))
    group, version, plural = OBJECTS[kind]

    def target() -> dict[str, Any]:
        obj: dict[str, Any] = custom.get_namespaced_custom_object(group, version, namespace, plural, name)
        return obj

    mlflow = MlflowClient(tracking_uri=mlflow_server.url, registry_uri=mlflow_server.url)
    s3_stable, s3_candidate = f"s3://bucket/{name}/stable", f"s3://bucket/{name}/candidate"
    v_stable = mlflow.create_model_version(name, s3_stable, await_creation_for=0).version
    v_candidate = mlflow.create_model_version(name, s3_candidate, await_creation_for=0).version
    logged = mlflow.create_logged_model(mlflow.create_experiment(f"s32-{uuid.uuid4().hex[:8]}"), name="model")
    v_new = mlflow.create_model_version(name, f"models:/{logged.model_id}", model_id=logged.model_id,
                                        await_creation_for=0).version
    assert mlflow.get_model_version(name, v_new).source.startswith(MLFLOW3)
    # The stand-ins serve those URIs with the scenario's real model servers.
    scenario.servers[s3_stable] = scenario.servers[scenario.storage_uri(scenario.stable_version)]
    scenario.servers[s3_candidate] = scenario.servers[scenario.storage_uri(scenario.candidate_version)]
    mlflow.set_registered_model_alias(name, STABLE_ALIAS, v_stable)
    patch: dict[str, Any] = {"spec": {"predictor": {"model": {"storageUri": s3_stable}}}} if kind == "kserve" else \
        {"spec": {"predictors": [{**target()["spec"]["predictors"][0], "graph": {
            **target()["spec"]["predictors"][0]["graph"], "modelUri": s3_stable}}]}}
    custom.patch_namespaced_custom_object(group, version, namespace, plural, name, patch)

    operator = OperatorProcess(kubeconfig, tmp_path / "operator.log",
                               extra_env={"MODELROLLOUT_STORAGE_URI_TEMPLATE": ""}).start()  # not set: {source}
    try:
        manifest = scenario.rollout(steps=[{"setWeight": 10}, {"pause": {}}])
        manifest["spec"]["model"]["version"] = str(v_candidate)
        apply(kubeconfig, manifest)
        status: dict[str, Any] = {}
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and not (status.get("phase") == "Paused"
                                                   and status.get("canaryWeight") == 10):
            status = get_rollout(kubeconfig, namespace, name).get("status") or {}
            time.sleep(0.3)
        assert status.get("phase") == "Paused" and status.get("canaryWeight") == 10, json.dumps(status)[-3000:]
        assert s3_candidate in json.dumps(target()["spec"])  # the old candidate is on the target

        manifest["spec"]["model"]["version"] = str(v_new)
        apply(kubeconfig, manifest)
        deadline = time.monotonic() + 60
        settled_at = None
        while time.monotonic() < deadline:
            obj = target()
            # Never staged, not even for a moment.
            assert MLFLOW3 not in json.dumps(obj["spec"]) + json.dumps(obj["metadata"].get("annotations") or {}), obj
            status = get_rollout(kubeconfig, namespace, name).get("status") or {}
            if refused(status) and settled_at is None:
                settled_at = time.monotonic()
            if settled_at is not None and time.monotonic() - settled_at > 10:  # and it stays so
                break
            time.sleep(0.2)
        assert refused(status), json.dumps(status)[-4000:]
        events = [entry["event"] for entry in status.get("history") or []]
        seen = events[events.index("NewCandidate"):] if "NewCandidate" in events else events
        assert seen[-1] == "RolledBackForNewCandidate" and "Recovered" in seen, seen  # nothing after the rollback
        assert not status.get("candidate"), status.get("candidate")
        condition = next(c for c in status["conditions"] if c["type"] == "RegistryAvailable")
        assert condition["status"] == "False"
        assert condition["message"].startswith(f"candidate version {v_new}'s source is a models: URI"), condition
        message = status.get("message") or ""
        assert message.startswith(f"Waiting for the registry to resolve {name} version {v_new}"), message
        assert message.count("source is a models: URI") == 1, message  # said once (review finding 3)
        obj = target()
        assert stable_uri(kind, obj) == s3_stable
        assert s3_candidate not in json.dumps(obj["spec"]), obj["spec"]  # the old candidate is off it
    finally:
        operator.stop()
