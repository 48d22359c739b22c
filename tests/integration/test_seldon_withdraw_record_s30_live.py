"""Review s30seldonv2, end to end (operator process, real kube-apiserver with the upstream Seldon CRDs, the Seldon
stand-ins, real MLflow): the candidate taken off the target some other way mid-canary (Argo CD self-heals the Seldon
v2 Experiment to its manifest; the v1 canary predictor deleted by hand), then `abort`. The rollback still runs the
router's rollback once, so its record of the candidate goes and nothing else changes: a model of the candidate's name
that another team adds later is theirs (the next staging refuses to drop it), not this rollout's canary."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from controller.devstack.scenario import Scenario
from controller.operator.kubeapi import APPLY_PATCH, load_client_config
from controller.traffic import CandidateModel, SeldonExperimentRouter, TargetStateError
from controller.traffic.seldon import ANN_CANDIDATE_MODEL, ANN_CANDIDATE_URI, ANN_CANDIDATE_VERSION, ANN_MODEL_VERSIONS
from tests.integration.operator_process import get_rollout, send_command
from tests.integration.test_rollout_kserve import apply, start_operator
from tests.integration.test_rollout_seldon import target_object
from tests.integration.test_seldon_handedit_s29_live import predictors, replace_sdep

pytestmark = pytest.mark.integration
STEPS = [{"setWeight": 10}, {"pause": {}}, {"setWeight": 50}]
FINAL = ("Succeeded", "RolledBack", "Failed")


def wait(kubeconfig: Path, scenario: Scenario, check: Any, timeout: float, what: str) -> dict[str, Any]:
    deadline, status = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        status = get_rollout(kubeconfig, scenario.namespace, scenario.model_name).get("status") or {}
        if check(status):
            return status
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}: {json.dumps(status)[:3000]}")


def paused_at_10(status: dict[str, Any]) -> bool:
    return status.get("phase") == "Paused" and status.get("canaryWeight") == 10


def abort_to_the_end(kubeconfig: Path, scenario: Scenario) -> dict[str, Any]:
    send_command(kubeconfig, scenario.namespace, scenario.model_name, "abort", "oncall", uuid.uuid4().hex[:8])
    status = wait(kubeconfig, scenario, lambda s: s.get("phase") in FINAL, 120, "the end")
    assert status["phase"] == "RolledBack", status.get("message")
    return status


def test_v2_experiment_synced_back_then_abort_drops_the_candidates_record(
        kubeconfig: Path, tmp_path: Path, seldon_scenario: Any) -> None:
    scenario: Scenario = seldon_scenario("seldonExperiment", "clean")
    api = load_client_config(str(kubeconfig))
    objects = client.CustomObjectsApi(api)
    key = ("mlops.seldon.io", "v1alpha1", scenario.namespace, "experiments", scenario.model_name)
    stable, candidate = (scenario.serving_name(v) for v in (scenario.stable_version, scenario.candidate_version))

    def force_apply(manager: str, candidates: list[dict[str, Any]]) -> None:
        body = {"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Experiment",
                "metadata": {"name": scenario.model_name, "namespace": scenario.namespace},
                "spec": {"default": stable, "candidates": candidates}}
        objects.patch_namespaced_custom_object(*key, body, field_manager=manager, force=True,
                                               _content_type=APPLY_PATCH)
        scenario.standin.reconcile(scenario.namespace, scenario.model_name)

    operator = start_operator(kubeconfig, tmp_path)
    try:
        apply(kubeconfig, scenario.rollout(steps=STEPS, progressDeadline="60s"))
        wait(kubeconfig, scenario, paused_at_10, 150, "paused at 10%")
        force_apply("argocd", [{"name": stable, "weight": 100}])  # Argo CD self-heal to the git manifest
        time.sleep(3)
        abort_to_the_end(kubeconfig, scenario)
        obj = objects.get_namespaced_custom_object(*key)
        annotations = obj["metadata"].get("annotations") or {}
        assert ANN_CANDIDATE_MODEL not in annotations, annotations
        assert candidate not in json.loads(annotations.get(ANN_MODEL_VERSIONS) or "{}"), annotations
        assert [(c["name"], c["weight"]) for c in obj["spec"]["candidates"]] == [(stable, 100)]  # nothing else
    finally:
        operator.stop()
    # Another team's arm under the candidate's old name: not this rollout's canary, and not dropped by a later one.
    force_apply("team-b", [{"name": stable, "weight": 100}, {"name": candidate, "weight": 20}])
    router = SeldonExperimentRouter(api, scenario.namespace, scenario.model_name)
    state = router.observe()
    assert state.canary_name is None and state.canary_weight is None, state
    with pytest.raises(TargetStateError, match="splits traffic with models ModelRollout does not manage"):
        router.stage(CandidateModel(scenario.model_name, "3", "s3://x/3"), stable_version=scenario.stable_version)


def test_v1_canary_deleted_by_hand_then_abort_drops_the_candidates_record(
        kubeconfig: Path, tmp_path: Path, seldon_scenario: Any) -> None:
    scenario: Scenario = seldon_scenario("seldonDeployment", "clean")
    stable = scenario.storage_uri(scenario.stable_version)
    operator = start_operator(kubeconfig, tmp_path)
    try:
        apply(kubeconfig, scenario.rollout(steps=STEPS, progressDeadline="60s"))
        wait(kubeconfig, scenario, paused_at_10, 150, "paused at 10%")

        def delete_canary(obj: dict[str, Any]) -> None:
            obj["spec"]["predictors"] = [p for p in obj["spec"]["predictors"] if p["name"] == "main"]
            obj["spec"]["predictors"][0]["traffic"] = 100
        replace_sdep(kubeconfig, scenario, delete_canary)
        time.sleep(3)
        abort_to_the_end(kubeconfig, scenario)
        annotations = target_object(kubeconfig, scenario)["metadata"].get("annotations") or {}
        assert ANN_CANDIDATE_VERSION not in annotations and ANN_CANDIDATE_URI not in annotations, annotations
        assert predictors(kubeconfig, scenario) == [("main", 100, stable)]  # nothing else changed
    finally:
        operator.stop()


def test_v2_stable_model_gone_then_abort_is_never_recovered(kubeconfig: Path, tmp_path: Path,
                                                             seldon_scenario: Any) -> None:
    """Stable's Model deleted mid-canary: the Experiment is not Ready and the mesh has nothing to send users to, so
    the withdrawal is not confirmed (as a restore is not): RollingBack, ProgressDeadlineExceeded at the deadline."""
    scenario: Scenario = seldon_scenario("seldonExperiment", "clean")
    stable = scenario.serving_name(scenario.stable_version)
    operator = start_operator(kubeconfig, tmp_path)
    try:
        apply(kubeconfig, scenario.rollout(steps=STEPS, progressDeadline="20s"))
        wait(kubeconfig, scenario, paused_at_10, 150, "paused at 10%")
        served = scenario.standin.models

        def without_stable(namespace: str, name: str) -> Any:  # `kubectl delete model <stable>`
            return None if name == stable else served(namespace, name)
        scenario.standin.models = without_stable
        for mesh in scenario.standin.meshes.values():
            mesh.models = without_stable
        scenario.standin.reconcile(scenario.namespace, scenario.model_name)
        time.sleep(2)
        send_command(kubeconfig, scenario.namespace, scenario.model_name, "abort", "oncall", uuid.uuid4().hex[:8])
        status = wait(kubeconfig, scenario, lambda s: any(
            c["type"] == "Progressing" and c["reason"] == "ProgressDeadlineExceeded" for c in s.get("conditions") or [])
            or s.get("phase") in FINAL, 90, "the deadline")
        assert status["phase"] == "RollingBack", status.get("message")
        assert f"does not report stable version {scenario.stable_version} serving and ready yet" in status["message"]
        assert not {"TrafficRestored", "Recovered"} & {h["event"] for h in status.get("history") or []}
    finally:
        operator.stop()
