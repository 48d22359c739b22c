"""Review s35kserve on the real API server with the upstream InferenceService CRD and the KServe stand-in: a Standard
canary entry an on-call added is not deleted by a weight or a promotion (a rollback takes it off with the candidate),
a Standard rollback whose HTTPRoute KServe reports not ready is not read as back on stable, and a Knative restore
whose new revision of stable never becomes ready says so."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from controller.devstack.kserve_standin import KServeStandIn
from controller.operator.kubeapi import load_client_config
from controller.traffic import TargetStateError
from controller.traffic.base import CandidateModel
from tests.integration.test_traffic_kserve import NAME, candidate_at, get, patch_as, wait_state

pytestmark = pytest.mark.integration


@pytest.fixture
def kserve(kubeconfig: Path, namespace: str) -> Iterator[tuple[client.ApiClient, KServeStandIn]]:
    """A client of the API server, and the stand-in playing KServe in this test's namespace."""
    with KServeStandIn(load_client_config(str(kubeconfig)), namespace=namespace) as running:
        yield load_client_config(str(kubeconfig)), running

SHADOW = {"trafficPercent": 5, "predictor": {"name": "shadow", "minReplicas": 1, "model": {
    "name": "kserve-container", "modelFormat": {"name": "sklearn"}, "storageUri": "s3://models/other/1"}}}


def names(api: client.ApiClient, namespace: str) -> list[str]:
    return [e["predictor"]["name"] for e in get(api, namespace)["spec"].get("canary") or []]


@pytest.mark.parametrize("operation", ["set_weight", "promote"])
def test_standard_an_entry_added_by_an_on_call_is_not_deleted_by_a_weight_or_a_promotion(
        kserve: tuple[client.ApiClient, KServeStandIn], namespace: str, operation: str) -> None:
    api = kserve[0]
    router = candidate_at(api, namespace, 10, mode="Standard")
    patch_as(api, namespace, [{"op": "add", "path": "/spec/canary/-", "value": SHADOW}],
             "application/json-patch+json", "team-oncall")
    wait_state(router, lambda s: "did not create" in s.message and s.canary_weight == 15)
    with pytest.raises(TargetStateError, match=r"did not create \(shadow\)"):
        router.set_weight(20, candidate_version="7") if operation == "set_weight" else router.promote()
    assert names(api, namespace) == ["v7", "shadow"]
    state = wait_state(router, lambda s: s.canary_version == "7")
    assert state.canary_weight == 15 and state.stable_version == "6", state
    # The way back always works: the candidate goes, and every other canary with it (all traffic to stable).
    router.rollback()
    assert names(api, namespace) == []
    wait_state(router, lambda s: s.ready and s.canary_version is None and not s.canary_weight)


def test_standard_rollback_is_not_back_on_stable_until_kserve_reports_the_ingress_ready(
        kserve: tuple[client.ApiClient, KServeStandIn], namespace: str) -> None:
    api, standin = kserve
    router = candidate_at(api, namespace, 50, mode="Standard")
    standin.set_ingress_not_ready(namespace, NAME)  # the Gateway has not programmed the new split yet
    router.rollback()
    state = wait_state(router, lambda s: s.canary_version is None and not s.canary_weight)
    assert not state.ready, state
    assert "IngressReady False (ParentStatusNotAvailable): Predictor HttpRouteNotReady" in state.message
    conditions = {c["type"]: c["status"] for c in get(api, namespace)["status"]["conditions"]}
    assert conditions["Ready"] == "False" and conditions["PredictorReady"] == "True"
    standin.set_ingress_not_ready(namespace, NAME, reason=None)
    state = wait_state(router, lambda s: s.ready)
    assert not state.canary_weight and state.message == "", state


def test_knative_restore_whose_new_revision_of_stable_never_becomes_ready_says_so(
        kserve: tuple[client.ApiClient, KServeStandIn], namespace: str) -> None:
    api = kserve[0]
    router = candidate_at(api, namespace, 0)
    router.promote()
    wait_state(router, lambda s: s.stable_version == "7" and not s.canary_staged)
    # Stable at another URI than the one recorded (the template changed): a new revision, which never gets ready.
    broken = CandidateModel(NAME, "6", "mlflow-artifacts:/1/models/m-6-never-ready/artifacts")
    router.restore(broken)
    state = wait_state(router, lambda s: "is not ready" in s.message)
    rolled_out = get(api, namespace)["status"]["components"]["predictor"]["latestRolledoutRevision"]
    assert f"{rolled_out} keeps 100% of traffic" in state.message and "never became ready" in state.message, state
    assert state.stable_version is None  # never confirmed as restored meanwhile
    router.restore(broken)  # called again, as the operator does: still says so, and nothing moves
    time.sleep(0.5)
    assert "never became ready" in router.observe().message
