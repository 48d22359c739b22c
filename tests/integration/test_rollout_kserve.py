"""Full rollouts on the local stack: real API server, real MLflow, real model servers, the KServe stand-in."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.devstack.controlplane import ControlPlane
from controller.devstack.mlflow_server import MlflowServer
from controller.devstack.scenario import STABLE_ALIAS, STORAGE_URI_TEMPLATE, Scenario
from controller.operator.kubeapi import load_client_config
from controller.registry import MlflowRegistry
from tests.conftest import run_kubectl
from tests.integration.operator_process import OperatorProcess, wait_for

pytestmark = pytest.mark.integration


def phase_in(*phases: str):
    return lambda obj: (obj.get("status") or {}).get("phase") in phases


@pytest.fixture
def scenario_factory(control_plane: ControlPlane, mlflow_server: MlflowServer, namespace: str,
                     tmp_path: Path) -> Iterator[Any]:
    made: list[Scenario] = []

    def make(candidate_kind: str = "clean") -> Scenario:
        api_client = load_client_config(str(control_plane.admin_kubeconfig))
        scenario = Scenario(api_client, mlflow_server.url, namespace, tmp_path / "scenario",
                            model_name=f"nsfw-{uuid.uuid4().hex[:6]}", candidate_kind=candidate_kind)
        made.append(scenario)
        return scenario.setup()

    yield make
    for scenario in made:
        scenario.stop()


def start_operator(kubeconfig: Path, tmp_path: Path) -> OperatorProcess:
    operator = OperatorProcess(kubeconfig, tmp_path / "operator.log",
                               extra_env={"MODELROLLOUT_STORAGE_URI_TEMPLATE": STORAGE_URI_TEMPLATE})
    return operator.start()


def apply(kubeconfig: Path, manifest: dict[str, Any]) -> None:
    result = run_kubectl(kubeconfig, "apply", "-f", "-", input_text=json.dumps(manifest))
    assert result.returncode == 0, result.stderr


def isvc(kubeconfig: Path, namespace: str, name: str) -> dict[str, Any]:
    result = run_kubectl(kubeconfig, "get", "inferenceservice", name, "-n", namespace, "-o", "json")
    return json.loads(result.stdout)


def test_clean_candidate_is_gated_stepped_and_promoted(kubeconfig: Path, namespace: str, tmp_path: Path,
                                                       scenario_factory: Any, mlflow_server: MlflowServer) -> None:
    scenario: Scenario = scenario_factory("clean")
    operator = start_operator(kubeconfig, tmp_path)
    try:
        apply(kubeconfig, scenario.rollout())
        obj = wait_for(kubeconfig, namespace, scenario.model_name, phase_in("Succeeded", "RolledBack", "Failed"),
                       timeout=180, log=operator.log)
    finally:
        operator.stop()
    status = obj["status"]
    assert status["phase"] == "Succeeded", status["message"]
    assert status["gate"]["outcome"] == "pass"
    assert status["gate"]["datasetSha256"] == scenario.dataset_sha256
    report = status["gate"]["report"]  # what the gate measured, for on-call without MLflow at hand
    assert report["dataset"]["sha256"] == scenario.dataset_sha256
    for side in ("candidate", "stable"):
        assert "nsfw" in report[side]["metrics"]["perClass"], report[side]
    assert "disagreement" in json.dumps(report["comparison"]), report["comparison"]
    events = [h["event"] for h in status["history"]]
    assert events.index("GatePassed") < events.index("WeightChanged") < events.index("Promoted")
    registry = MlflowRegistry(mlflow_server.url)
    assert registry.verify_alias(scenario.model_name, STABLE_ALIAS) == scenario.candidate_version
    predictor = isvc(kubeconfig, namespace, scenario.model_name)["spec"]["predictor"]
    assert predictor["model"]["storageUri"] == scenario.storage_uri(scenario.candidate_version)
    # The gate's evidence outlives the resource: an MLflow run linked from the candidate version.
    tags = registry.resolve(scenario.model_name, version=scenario.candidate_version).tags
    assert tags["modelrollout.gate.outcome"] == "pass"
    assert tags["modelrollout.gate.dataset_sha256"] == scenario.dataset_sha256
    assert tags["modelrollout.gate.run_id"]
    # So does the way back: the promoted version names the one it replaced, and @<alias>-previous points there.
    assert tags["modelrollout.previous_version"] == scenario.stable_version
    assert tags["modelrollout.promoted.rollout"] == f"{namespace}/{scenario.model_name}"
    assert registry.verify_alias(scenario.model_name, f"{STABLE_ALIAS}-previous") == scenario.stable_version
    assert "canaryTrafficPercent" not in predictor


def test_worse_candidate_fails_the_gate_and_never_takes_traffic(kubeconfig: Path, namespace: str, tmp_path: Path,
                                                                scenario_factory: Any,
                                                                mlflow_server: MlflowServer) -> None:
    scenario: Scenario = scenario_factory("worse")
    operator = start_operator(kubeconfig, tmp_path)
    try:
        apply(kubeconfig, scenario.rollout())
        obj = wait_for(kubeconfig, namespace, scenario.model_name, phase_in("Succeeded", "RolledBack", "Failed"),
                       timeout=180, log=operator.log)
    finally:
        operator.stop()
    status = obj["status"]
    assert status["phase"] == "RolledBack", status["message"]
    assert status["gate"]["outcome"] == "fail"
    assert not any(h["event"] == "WeightChanged" for h in status["history"])
    registry = MlflowRegistry(mlflow_server.url)
    assert registry.verify_alias(scenario.model_name, STABLE_ALIAS) == scenario.stable_version
    tags = registry.resolve(scenario.model_name, version=scenario.candidate_version).tags
    assert tags["modelrollout.rejected"] == "true" and "accuracy" in tags["modelrollout.rejected.reason"].lower()
    predictor = isvc(kubeconfig, namespace, scenario.model_name)["spec"]["predictor"]
    assert predictor["model"]["storageUri"] == scenario.storage_uri(scenario.stable_version)
