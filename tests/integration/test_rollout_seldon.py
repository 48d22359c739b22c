"""Full rollouts on Seldon Core v1 (SeldonDeployment) and v2 (Experiment) on the local stack: the real API
server with the upstream Seldon CRDs, real MLflow, real model servers, and stand-ins playing Seldon's
controllers (controller/devstack/seldon_standin.py). The golden gate reaches the candidate and stable
through the URLs the routers read from what Seldon reports: the predictors' Services in the
SeldonDeployment's status, the seldon-mesh Service's load balancer for Experiments."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from controller.devstack.mlflow_server import MlflowServer
from controller.devstack.scenario import CANARY_PREDICTOR, STABLE_ALIAS, STABLE_PREDICTOR, Scenario
from controller.devstack.seldon_standin import SeldonExperimentStandIn
from controller.registry import MlflowRegistry
from controller.traffic import router_for
from controller.traffic.base import ANNOTATION_PREFIX
from tests.conftest import run_kubectl
from tests.integration.operator_process import wait_for
from tests.integration.test_rollout_kserve import apply, phase_in, start_operator

pytestmark = pytest.mark.integration

TARGETS = ("seldonDeployment", "seldonExperiment")
RESOURCE = {"seldonDeployment": "seldondeployments.machinelearning.seldon.io",
            "seldonExperiment": "experiments.mlops.seldon.io"}
ANN_MODEL_VERSION = ANNOTATION_PREFIX + "model-version"
ANN_CANDIDATE_VERSION = ANNOTATION_PREFIX + "candidate-version"
ANN_STABLE_MODEL = ANNOTATION_PREFIX + "stable-model"
ANN_CANDIDATE_MODEL = ANNOTATION_PREFIX + "candidate-model"
ANN_MODEL_VERSIONS = ANNOTATION_PREFIX + "model-versions"
FINAL = ("Succeeded", "RolledBack", "Failed")


def run_rollout(kubeconfig: Path, tmp_path: Path, scenario: Scenario) -> dict[str, Any]:
    operator = start_operator(kubeconfig, tmp_path)
    try:
        apply(kubeconfig, scenario.rollout())
        return wait_for(kubeconfig, scenario.namespace, scenario.model_name, phase_in(*FINAL), timeout=180,
                        log=operator.log)
    finally:
        operator.stop()


def target_object(kubeconfig: Path, scenario: Scenario) -> dict[str, Any]:
    result = run_kubectl(kubeconfig, "get", RESOURCE[scenario.target_kind], scenario.model_name,
                         "-n", scenario.namespace, "-o", "json")
    assert result.returncode == 0, result.stderr
    obj: dict[str, Any] = json.loads(result.stdout)
    return obj


def events(status: dict[str, Any]) -> list[str]:
    return [entry["event"] for entry in status["history"]]


def assert_serving(kubeconfig: Path, scenario: Scenario, version: str) -> None:
    """The target sends all traffic to `version` and names no candidate."""
    obj = target_object(kubeconfig, scenario)
    annotations = obj["metadata"].get("annotations") or {}
    if scenario.target_kind == "seldonDeployment":
        predictors = obj["spec"]["predictors"]
        assert [(p["name"], p["traffic"]) for p in predictors] == [(STABLE_PREDICTOR, 100)]
        assert predictors[0]["graph"]["modelUri"] == scenario.storage_uri(version)
        assert annotations[ANN_MODEL_VERSION] == version and ANN_CANDIDATE_VERSION not in annotations
    else:
        weights = {c["name"]: c["weight"] for c in obj["spec"]["candidates"]}
        stable_model = scenario.serving_name(scenario.stable_version)
        assert obj["spec"]["default"] == stable_model  # the experiment's default never moves
        share = {name: weight for name, weight in weights.items() if weight}
        assert share == {scenario.serving_name(version): 100}
        assert annotations[ANN_STABLE_MODEL] == scenario.serving_name(version)
        assert ANN_CANDIDATE_MODEL not in annotations
        assert json.loads(annotations[ANN_MODEL_VERSIONS])[scenario.serving_name(version)] == version


def settled(kubeconfig: Path, scenario: Scenario, timeout: float = 30.0) -> dict[str, Any]:
    """The target once Seldon (the stand-in) reports it ready again: pods rolled, stale entries gone."""
    deadline = time.monotonic() + timeout
    while True:
        obj = target_object(kubeconfig, scenario)
        status = obj.get("status") or {}
        ready = status.get("state") == "Available" if scenario.target_kind == "seldonDeployment" else \
            any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or [])
        if ready or time.monotonic() > deadline:
            assert ready, status
            return obj
        time.sleep(0.2)


def assert_gate_went_through_seldon(kubeconfig: Path, scenario: Scenario, serving: str) -> None:
    """The gate can only have reached the model servers through the URLs the routers read from Seldon."""
    router = router_for(scenario.target(), scenario.namespace, scenario.api_client,
                        gate_hosts=("127.0.0.1",))  # as the tests' operator runs: its model servers are on loopback
    if scenario.target_kind == "seldonDeployment":
        # The stable predictor's Service as Seldon reports it, on the server of the version it now runs.
        obj = settled(kubeconfig, scenario)
        # Its one Deployment: by Seldon's container rule, or named after the version a promotion gave it.
        promoted = f"-v{serving}" if serving == scenario.candidate_version else ""
        assert set(obj["status"]["deploymentStatus"]) == {f"{scenario.model_name}-{STABLE_PREDICTOR}-0-"
                                                          f"{scenario.model_name}{promoted}"}
        server = scenario.servers[scenario.storage_uri(serving)]
        assert router.observe().stable_url == f"{server.url}/v2/models/{scenario.model_name}/infer"
    else:
        settled(kubeconfig, scenario)
        assert isinstance(scenario.standin, SeldonExperimentStandIn)
        served = scenario.standin.mesh(scenario.namespace).served
        assert served[scenario.serving_name(scenario.stable_version)] > 0
        assert served[scenario.serving_name(scenario.candidate_version)] > 0


@pytest.mark.parametrize("target_kind", TARGETS)
def test_clean_candidate_is_gated_stepped_and_promoted(kubeconfig: Path, tmp_path: Path, seldon_scenario: Any,
                                                       mlflow_server: MlflowServer, target_kind: str) -> None:
    scenario: Scenario = seldon_scenario(target_kind, "clean")
    obj = run_rollout(kubeconfig, tmp_path, scenario)
    status = obj["status"]
    assert status["phase"] == "Succeeded", status["message"]
    assert status["gate"]["outcome"] == "pass"
    assert status["gate"]["datasetSha256"] == scenario.dataset_sha256
    history = events(status)
    assert history.index("CandidateStaged") < history.index("GatePassed") < history.index("WeightChanged") \
        < history.index("Promoted") < history.index("AliasMoved")
    weights = [entry["detail"] for entry in status["history"] if entry["event"] == "WeightChanged"]
    assert len(weights) == 2 and "10" in weights[0] and "50" in weights[1]
    assert (status["candidate"]["version"], status["stable"]["version"]) == \
        (scenario.candidate_version, scenario.stable_version)

    registry = MlflowRegistry(mlflow_server.url)
    assert registry.verify_alias(scenario.model_name, STABLE_ALIAS) == scenario.candidate_version
    assert "modelrollout.rejected" not in registry.resolve(scenario.model_name,
                                                           version=scenario.candidate_version).tags
    assert_serving(kubeconfig, scenario, scenario.candidate_version)
    assert_gate_went_through_seldon(kubeconfig, scenario, scenario.candidate_version)


@pytest.mark.parametrize("target_kind", TARGETS)
def test_worse_candidate_fails_the_gate_and_is_rolled_back(kubeconfig: Path, tmp_path: Path, seldon_scenario: Any,
                                                           mlflow_server: MlflowServer, target_kind: str) -> None:
    scenario: Scenario = seldon_scenario(target_kind, "worse")
    obj = run_rollout(kubeconfig, tmp_path, scenario)
    status = obj["status"]
    assert status["phase"] == "RolledBack", status["message"]
    assert status["gate"]["outcome"] == "fail"
    history = events(status)
    assert "WeightChanged" not in history and "Promoted" not in history
    assert history.index("CandidateStaged") < history.index("GateFailed") < history.index("RollbackStarted")
    assert "CandidateRejected" in history

    registry = MlflowRegistry(mlflow_server.url)
    assert registry.verify_alias(scenario.model_name, STABLE_ALIAS) == scenario.stable_version
    tags = registry.resolve(scenario.model_name, version=scenario.candidate_version).tags
    assert tags["modelrollout.rejected"] == "true" and "accuracy" in tags["modelrollout.rejected.reason"].lower()
    assert_serving(kubeconfig, scenario, scenario.stable_version)
    assert_gate_went_through_seldon(kubeconfig, scenario, scenario.stable_version)
    obj = target_object(kubeconfig, scenario)
    if target_kind == "seldonDeployment":
        assert CANARY_PREDICTOR not in {p["name"] for p in obj["spec"]["predictors"]}
    else:  # the rejected Model is out of the experiment, not merely at weight 0
        assert [c["name"] for c in obj["spec"]["candidates"]] == [scenario.serving_name(scenario.stable_version)]
