"""Review s29seldonv1, end to end (operator process, real kube-apiserver with the upstream Seldon v1 CRD, the v1
stand-in, real MLflow): a hand promotion through main's modelUri, then `abort`, ends with stable's model back in main
and the rollout confirmed only once its Deployments serve; a canary renamed by hand, its candidate deleted from the
registry, then `promote`, ends with the renamed predictor at 0%; a promotion Seldon is still rolling out says so."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from controller.devstack.scenario import Scenario
from tests.conftest import run_kubectl
from tests.integration.operator_process import get_rollout, send_command
from tests.integration.test_rollout_kserve import apply, start_operator
from tests.integration.test_rollout_seldon import target_object

pytestmark = pytest.mark.integration
STEPS = [{"setWeight": 10}, {"pause": {}}]
FINAL = ("Succeeded", "RolledBack", "Failed")


def status_of(kubeconfig: Path, scenario: Scenario) -> dict[str, Any]:
    return get_rollout(kubeconfig, scenario.namespace, scenario.model_name).get("status") or {}


def wait(kubeconfig: Path, scenario: Scenario, check: Any, timeout: float, what: str) -> dict[str, Any]:
    deadline, status = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        status = status_of(kubeconfig, scenario)
        if check(status):
            return status
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}: {json.dumps(status)[:3000]}")


def paused_at_10(status: dict[str, Any]) -> bool:
    return status.get("phase") == "Paused" and status.get("currentStep") == 1 and status.get("canaryWeight") == 10


def replace_sdep(kubeconfig: Path, scenario: Scenario, edit: Any) -> None:
    """A human's read-edit-`kubectl replace` of the SeldonDeployment."""
    obj = target_object(kubeconfig, scenario)
    edit(obj)
    obj["metadata"].pop("managedFields", None)
    result = run_kubectl(kubeconfig, "replace", "-f", "-", input_text=json.dumps(obj))
    assert result.returncode == 0, result.stderr


def predictors(kubeconfig: Path, scenario: Scenario) -> list[tuple[str, int, str]]:
    obj = target_object(kubeconfig, scenario)
    return [(p["name"], p.get("traffic") or 0, p["graph"].get("modelUri")) for p in obj["spec"]["predictors"]]


def events(status: dict[str, Any]) -> list[str]:
    return [entry["event"] for entry in status.get("history") or []]


def test_hand_promotion_through_main_then_abort_restores_stable(kubeconfig: Path, tmp_path: Path,
                                                                 seldon_scenario: Any) -> None:
    scenario: Scenario = seldon_scenario("seldonDeployment", "clean")
    operator = start_operator(kubeconfig, tmp_path)
    try:
        apply(kubeconfig, scenario.rollout(steps=STEPS))
        wait(kubeconfig, scenario, paused_at_10, 150, "paused at 10%")
        candidate = scenario.storage_uri(scenario.candidate_version)
        stable = scenario.storage_uri(scenario.stable_version)

        def promote_by_hand(obj: dict[str, Any]) -> None:  # main loads the candidate; the canary is left as it is
            main = next(p for p in obj["spec"]["predictors"] if p["name"] == "main")
            main["graph"]["modelUri"] = candidate
        replace_sdep(kubeconfig, scenario, promote_by_hand)
        time.sleep(2)
        # The restored version's new Deployments take a while: the rollback must wait for them.
        scenario.standin.ready_delay = 6.0
        send_command(kubeconfig, scenario.namespace, scenario.model_name, "abort", "alice", uuid.uuid4().hex)
        wait(kubeconfig, scenario, lambda s: s.get("phase") == "RollingBack" or s.get("phase") in FINAL, 60,
             "the rollback")
        started = time.monotonic()
        status = wait(kubeconfig, scenario, lambda s: s.get("phase") in FINAL, 120, "the end")
        assert status["phase"] == "RolledBack", status.get("message")
        assert time.monotonic() - started > 3, "confirmed before the restored version's Deployments were available"
        assert predictors(kubeconfig, scenario) == [("main", 100, stable)]
        restored = [h.get("detail") for h in status["history"] if h["event"] == "TrafficRestored"]
        assert restored and restored[-1].startswith(f"version {scenario.stable_version} to 100% observed"), restored
        ready = target_object(kubeconfig, scenario)["status"]
        assert ready.get("state") == "Available", ready
    finally:
        scenario.standin.ready_delay = 0.5
        operator.stop()


def test_renamed_canary_then_candidate_deleted_then_promote_takes_users_off(
        kubeconfig: Path, tmp_path: Path, seldon_scenario: Any, mlflow_server: Any) -> None:
    scenario: Scenario = seldon_scenario("seldonDeployment", "clean")
    operator = start_operator(kubeconfig, tmp_path)
    try:
        apply(kubeconfig, scenario.rollout(steps=STEPS))
        wait(kubeconfig, scenario, paused_at_10, 150, "paused at 10%")

        def rename(obj: dict[str, Any]) -> None:
            for predictor in obj["spec"]["predictors"]:
                if predictor["name"] == "canary":
                    predictor["name"] = "canary-b"
        replace_sdep(kubeconfig, scenario, rename)
        time.sleep(2)
        requests.delete(f"{mlflow_server.url}/api/2.0/mlflow/model-versions/delete", timeout=10,
                        json={"name": scenario.model_name, "version": scenario.candidate_version}).raise_for_status()
        send_command(kubeconfig, scenario.namespace, scenario.model_name, "promote", "carol", uuid.uuid4().hex)
        status = wait(kubeconfig, scenario, lambda s: s.get("phase") in FINAL, 120, "the end")
        assert status["phase"] == "Failed", status.get("message")
        candidate = scenario.storage_uri(scenario.candidate_version)
        assert ("canary-b", 0, candidate) in predictors(kubeconfig, scenario)
        assert sum(t for n, t, _ in predictors(kubeconfig, scenario) if n != "main") == 0
        restored = [h.get("detail") for h in status["history"] if h["event"] == "TrafficRestored"]
        assert restored and "never staged" not in restored[-1], restored
        annotations = target_object(kubeconfig, scenario)["metadata"].get("annotations") or {}
        assert "modelrollout.io/candidate-version" not in annotations
    finally:
        operator.stop()


def test_a_promotion_seldon_is_still_rolling_out_says_so(kubeconfig: Path, tmp_path: Path,
                                                          seldon_scenario: Any) -> None:
    scenario: Scenario = seldon_scenario("seldonDeployment", "clean")
    operator = start_operator(kubeconfig, tmp_path)
    try:
        apply(kubeconfig, scenario.rollout(steps=STEPS))
        wait(kubeconfig, scenario, paused_at_10, 150, "paused at 10%")
        scenario.standin.ready_delay = 20.0  # the promoted version's new Deployments take a while
        send_command(kubeconfig, scenario.namespace, scenario.model_name, "promote", "carol", uuid.uuid4().hex)
        status = wait(kubeconfig, scenario, lambda s: s.get("phase") == "Promoting"
                      and "still rolling out" in (s.get("message") or ""), 30, "the wait")
        assert status["message"].startswith("Promoting candidate"), status["message"]  # not a hold
        assert "no longer staged" not in status["message"]
        scenario.standin.ready_delay = 0.5
        status = wait(kubeconfig, scenario, lambda s: s.get("phase") in FINAL or s.get("phase") == "Baking", 90,
                      "the promotion")
        assert "Promoted" in events(status), status.get("message")
    finally:
        scenario.standin.ready_delay = 0.5
        operator.stop()
