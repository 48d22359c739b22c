"""Fixer s30kservefix, live (real kube-apiserver with the upstream InferenceService CRD, the KServe stand-in; the first
test also real MLflow, real model servers and the operator as a process): the candidate taken out of spec.predictor
by hand mid-canary (the team's manifest put back by server-side apply with force, as Argo CD's self-heal does), then
`abort`. The rollback's withdrawal (sent once since 7919eb4) leaves the router's record as a rollback of its own
would (stable's version on stable's storageUri), the spec as the manifest says. A third model put there instead is
someone else's: the rollback refuses, writing nothing. Standard mode keeps its record on the canary entry, so a
canary removed by hand takes its record with it."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from controller.devstack.kserve_standin import KServeStandIn
from controller.devstack.scenario import Scenario
from controller.operator.kubeapi import APPLY_PATCH, load_client_config
from controller.traffic import KServeRouter, TargetStateError
from controller.traffic.kserve import ANN_STABLE_URI, ANN_STABLE_VERSION, ANN_VERSION, ANN_VERSION_URI
from tests.integration.operator_process import get_rollout, send_command
from tests.integration.test_rollout_kserve import apply, scenario_factory, start_operator  # noqa: F401
from tests.integration.test_traffic_kserve import (
    CANDIDATE_7,
    GITOPS,
    GROUP,
    NAME,
    PLURAL,
    V6,
    VERSION,
    apply_isvc,
    get,
    wait_state,
)

pytestmark = pytest.mark.integration
PREFIX = "modelrollout.io/"
THIRD = "mlflow-artifacts:/1/models/m-9/artifacts"  # a newer model the team's Git names: not this rollout's


def ours(obj: dict[str, Any]) -> dict[str, str]:
    return {k: v for k, v in (obj["metadata"].get("annotations") or {}).items() if k.startswith(PREFIX)}


def wait(kubeconfig: Path, scenario: Scenario, check: Any, timeout: float, what: str) -> dict[str, Any]:
    deadline, status = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        status = get_rollout(kubeconfig, scenario.namespace, scenario.model_name).get("status") or {}
        if check(status):
            return status
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}: {json.dumps(status)[:3000]}")


def test_knative_manifest_put_back_then_abort_records_stable(kubeconfig: Path, tmp_path: Path,
                                                             scenario_factory: Any) -> None:  # noqa: F811
    scenario: Scenario = scenario_factory("clean")
    kube = load_client_config(str(kubeconfig))
    objects = client.CustomObjectsApi(kube)
    key = (GROUP, VERSION, scenario.namespace, PLURAL, scenario.model_name)
    manifest = objects.get_namespaced_custom_object(*key)  # as created: the team's manifest in Git
    manifest = {"apiVersion": manifest["apiVersion"], "kind": manifest["kind"],
                "metadata": {"name": scenario.model_name, "namespace": scenario.namespace},
                "spec": manifest["spec"]}
    stable_uri = scenario.storage_uri(scenario.stable_version)
    operator = start_operator(kubeconfig, tmp_path)
    try:
        apply(kubeconfig, scenario.rollout(steps=[{"setWeight": 10}, {"pause": {}}, {"setWeight": 50}],
                                           progressDeadline="90s"))
        wait(kubeconfig, scenario, lambda s: s.get("phase") == "Paused" and s.get("canaryWeight") == 10, 180,
             "paused at 10%")
        assert ours(objects.get_namespaced_custom_object(*key))[ANN_VERSION] == scenario.candidate_version
        # Argo CD's self-heal: the manifest applied with force by its own manager (our canaryTrafficPercent stays).
        objects.patch_namespaced_custom_object(*key, manifest, field_manager="argocd-controller", force=True,
                                               _content_type=APPLY_PATCH)
        time.sleep(3)
        send_command(kubeconfig, scenario.namespace, scenario.model_name, "abort", "oncall", uuid.uuid4().hex[:8])
        status = wait(kubeconfig, scenario, lambda s: s.get("phase") in ("Succeeded", "RolledBack", "Failed"), 120,
                      "the end")
        assert status["phase"] == "RolledBack", status.get("message")
        # The record as a rollback of ours leaves it: stable's version on stable's storageUri.
        deadline = time.monotonic() + 30
        while True:
            obj = objects.get_namespaced_custom_object(*key)
            if "canaryTrafficPercent" not in obj["spec"]["predictor"] or time.monotonic() > deadline:
                break  # the pin (ours, left by the self-heal) comes off once the copy of stable is ready
            time.sleep(0.3)
        annotations = ours(obj)
        assert annotations[ANN_VERSION] == scenario.stable_version, annotations
        assert annotations[ANN_VERSION_URI] == stable_uri, annotations
        assert (annotations[ANN_STABLE_VERSION], annotations[ANN_STABLE_URI]) == (scenario.stable_version, stable_uri)
        assert obj["spec"] == manifest["spec"], obj["spec"]  # the spec as the manifest says, nothing else
        state = KServeRouter(kube, scenario.namespace, scenario.model_name).observe()
        assert state.stable_version == scenario.stable_version and "outside ModelRollout" not in state.message, state
    finally:
        operator.stop()


@pytest.fixture(scope="module")
def api(kubeconfig: Path) -> client.ApiClient:
    return load_client_config(str(kubeconfig))


@pytest.fixture
def standin(kubeconfig: Path, namespace: str) -> Iterator[KServeStandIn]:
    with KServeStandIn(load_client_config(str(kubeconfig)), namespace=namespace) as running:
        yield running


def _self_heal(api: client.ApiClient, namespace: str, uri: str, mode: str = "Serverless",
               extra: dict[str, Any] | None = None) -> None:
    """The team's manifest (apply_isvc's) with `uri`, forced by its manager as Argo CD's self-heal does."""
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "InferenceService",
            "metadata": {"name": NAME, "namespace": namespace, "labels": {"team": "moderation"},
                         "annotations": {"serving.kserve.io/deploymentMode": mode}},
            "spec": {"predictor": {"minReplicas": 1, "model": {
                "storageUri": uri, "modelFormat": {"name": "sklearn"}, "resources": {"requests": {"cpu": "100m"}}}},
                **(extra or {})}}
    client.CustomObjectsApi(api).patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, NAME, body,
                                                                field_manager=GITOPS, force=True,
                                                                _content_type=APPLY_PATCH)


def test_knative_a_third_model_synced_in_is_refused_and_left_as_it_is(api: client.ApiClient, namespace: str,
                                                                      standin: KServeStandIn) -> None:
    apply_isvc(api, namespace)
    router = KServeRouter(api, namespace, NAME)
    wait_state(router, lambda s: s.ready)
    router.stage(CANDIDATE_7, stable_version="6")
    wait_state(router, lambda s: s.canary_ready)
    router.set_weight(10, "7")
    wait_state(router, lambda s: s.canary_weight == 10)
    _self_heal(api, namespace, THIRD)
    wait_state(router, lambda s: s.synced)
    before = get(api, namespace)
    with pytest.raises(TargetStateError, match="neither the candidate nor stable") as refused:
        router.rollback()
    assert "m-9" in str(refused.value) and "canaryTrafficPercent 10" in str(refused.value)
    after = get(api, namespace)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]  # nothing written
    assert after["spec"]["predictor"]["model"]["storageUri"] == THIRD


def test_knative_stable_synced_back_rollback_records_stable_once(api: client.ApiClient, namespace: str,
                                                                 standin: KServeStandIn) -> None:
    """The router alone, called as the operator does (until nothing is pinned): the record settled in one write."""
    apply_isvc(api, namespace)
    router = KServeRouter(api, namespace, NAME)
    wait_state(router, lambda s: s.ready)
    router.stage(CANDIDATE_7, stable_version="6")
    wait_state(router, lambda s: s.canary_ready)
    router.set_weight(10, "7")
    wait_state(router, lambda s: s.canary_weight == 10)
    _self_heal(api, namespace, V6)
    state = wait_state(router, lambda s: s.synced)
    assert "outside ModelRollout" in state.message  # the record still names 7 before the rollback
    deadline = time.monotonic() + 15
    while True:
        KServeRouter(api, namespace, NAME).rollback()
        state = router.observe()
        if state.synced and not state.pinned and not state.canary_staged:
            break
        assert time.monotonic() < deadline, f"the rollback never finished: {state}"
        time.sleep(0.1)
    state = wait_state(router, lambda s: s.ready and s.stable_version == "6" and not s.canary_weight)
    assert "outside ModelRollout" not in state.message, state
    obj = get(api, namespace)
    assert (ours(obj)[ANN_VERSION], ours(obj)[ANN_VERSION_URI]) == ("6", V6)
    assert obj["spec"]["predictor"]["model"]["storageUri"] == V6
    # 00003 is the self-heal's copy of stable; the settling write made one more (00004), and no other.
    assert state.stable_name == f"{NAME}-predictor-00004"
    router.rollback()
    assert get(api, namespace)["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"]


def test_standard_canary_synced_away_takes_its_record_with_it(api: client.ApiClient, namespace: str,
                                                              standin: KServeStandIn) -> None:
    """Standard mode: the candidate's record lives on our canary entry, so a manifest that empties spec.canary takes
    it away; rollback() writes nothing and stable's record stays true."""
    apply_isvc(api, namespace, mode="RawDeployment")
    router = KServeRouter(api, namespace, NAME)
    wait_state(router, lambda s: s.ready)
    router.stage(CANDIDATE_7, stable_version="6")
    wait_state(router, lambda s: s.canary_ready)
    router.set_weight(10, "7")
    wait_state(router, lambda s: s.canary_weight == 10)
    _self_heal(api, namespace, V6, mode="RawDeployment", extra={"canary": []})
    wait_state(router, lambda s: s.synced and not s.canary_staged)
    before = get(api, namespace)
    router.rollback()
    after = get(api, namespace)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert not after["spec"].get("canary") and after["spec"]["predictor"]["model"]["storageUri"] == V6
    annotations = after["spec"]["predictor"].get("annotations") or {}
    assert not any(v == CANDIDATE_7.storage_uri or k.endswith("stable-storage-uri") for k, v in annotations.items())
    state = router.observe()
    assert state.canary_name is None and "outside ModelRollout" not in state.message, state
