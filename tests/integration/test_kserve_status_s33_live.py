"""KServe (review s33kserve): a bad or stale status never reads as a confirmation. Real kube-apiserver + upstream
InferenceService CRD; the KServe stand-in plays KServe until it is stopped, then the test writes the status as a
broken or stale KServe would (status subresource, schema-validated)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from controller.devstack.kserve_standin import KServeStandIn
from controller.operator.kubeapi import load_client_config
from controller.traffic import KServeRouter, router_for
from controller.traffic.kserve import ANN_WITHDRAWN_REVISION
from tests.integration.test_traffic_kserve import (
    CANDIDATE_7,
    CANDIDATE_8,
    GROUP,
    NAME,
    PLURAL,
    VERSION,
    apply_isvc,
    get,
    wait_state,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def api(kubeconfig: Path) -> client.ApiClient:
    return load_client_config(str(kubeconfig))


def write_status(api: client.ApiClient, ns: str, patch: dict[str, Any]) -> None:
    client.CustomObjectsApi(api).patch_namespaced_custom_object_status(
        GROUP, VERSION, ns, PLURAL, NAME, patch, _content_type="application/merge-patch+json")


def canary_at(router: KServeRouter, weight: int) -> None:
    """With KServe playing: candidate 7 staged beside stable 6, then given `weight`%."""
    wait_state(router, lambda s: s.ready)
    router.stage(CANDIDATE_7, stable_version="6")
    wait_state(router, lambda s: s.canary_ready)
    router.set_weight(weight, candidate_version="7")
    wait_state(router, lambda s: s.canary_weight == weight)


def rolled_back_knative(api: client.ApiClient, ns: str, kubeconfig: Path, pinned: bool = False) -> KServeRouter:
    """Candidate 7 staged at 30%, then rolled back with the stand-in playing KServe (pinned: until the pin is seen)."""
    apply_isvc(api, ns)
    router = router_for({"kserve": {"inferenceService": NAME}}, ns, api)
    assert isinstance(router, KServeRouter)
    with KServeStandIn(load_client_config(str(kubeconfig)), namespace=ns):
        canary_at(router, 30)
        router.rollback()
        wait_state(router, lambda s: not s.canary_staged and (s.pinned or not pinned))
        time.sleep(0.5)
    return router


def test_knative_rolled_back_status_without_traffic(api: client.ApiClient, namespace: str, kubeconfig: Path) -> None:
    """README: 'A KServe status without its traffic split reads as not yet synced'."""
    router = rolled_back_knative(api, namespace, kubeconfig)
    obj = get(api, namespace)
    # KServe (stopped) now reports a caught-up generation with no traffic split and no conditions at all
    write_status(api, namespace, {"status": {"observedGeneration": obj["metadata"]["generation"], "conditions": None,
                                             "components": {"predictor": {"traffic": None}}}})
    obj = get(api, namespace)
    state = router.observe()
    assert not state.synced, "a status without its traffic split was read as synced (weight None, ready)"
    assert not state.ready, "no PredictorRouteReady / IngressReady condition read as the route serving"


def test_knative_rolled_back_traffic_to_nobody(api: client.ApiClient, namespace: str, kubeconfig: Path) -> None:
    """The split says 0% everywhere: stable does not serve."""
    router = rolled_back_knative(api, namespace, kubeconfig)
    obj = get(api, namespace)
    traffic = obj["status"]["components"]["predictor"]["traffic"]
    zeroed = [{**t, "percent": 0} if t.get("percent") else t for t in traffic]
    write_status(api, namespace, {"status": {"observedGeneration": obj["metadata"]["generation"],
                                             "components": {"predictor": {"traffic": zeroed}}}})
    state = router.observe()
    assert not (state.synced and state.ready and not state.canary_weight), \
        "a split sending 0% to every revision reads as all traffic back on stable"


def test_standard_rolled_back_stale_canary_status(api: client.ApiClient, namespace: str, kubeconfig: Path) -> None:
    """Standard mode: after rollback (spec.canary: []) KServe's status still reports the candidate at 50%."""
    apply_isvc(api, namespace, mode="Standard")
    router = router_for({"kserve": {"inferenceService": NAME}}, namespace, api)
    assert isinstance(router, KServeRouter)
    with KServeStandIn(load_client_config(str(kubeconfig)), namespace=namespace):
        canary_at(router, 50)
        stale = get(api, namespace)["status"]
        router.rollback()
        time.sleep(1.0)
    obj = get(api, namespace)
    write_status(api, namespace, {"status": {"observedGeneration": obj["metadata"]["generation"],
                                             "canaryStatuses": stale["canaryStatuses"]}})
    state = router.observe()
    assert not (state.synced and not state.canary_weight), \
        "KServe reporting the withdrawn canary still at 50% reads as traffic back on stable"


def test_knative_restage_over_copy_without_configuration_condition(api: client.ApiClient, namespace: str,
                                                                  kubeconfig: Path) -> None:
    """Rolled back (pin still on, the copy of stable r3 the latest revision), a new candidate staged; KServe's status
    looks caught up (kserve#6081) but still names the copy as latestCreated/Ready, and carries no
    PredictorConfigurationReady condition: the copy of stable must not read as the new candidate, ready."""
    router = rolled_back_knative(api, namespace, kubeconfig, pinned=True)
    before = get(api, namespace)
    comp = before["status"]["components"]["predictor"]
    router.stage(CANDIDATE_8)
    obj = get(api, namespace)
    conditions = [c for c in obj["status"]["conditions"] if c["type"] != "PredictorConfigurationReady"]
    write_status(api, namespace, {"status": {"observedGeneration": obj["metadata"]["generation"],
                                             "conditions": conditions}})
    state = router.observe()
    copy_of_stable = comp["latestCreatedRevision"]
    assert not (state.canary_ready and state.canary_version == "8" and state.canary_name == copy_of_stable), \
        "the copy of stable (the previous latest revision) reads as candidate 8, ready"
    assert state.canary_name != copy_of_stable, "the copy of stable recorded at staging taken for the candidate"
    # Staging recorded the revision latest before its write (the copy of stable): never the candidate's.
    assert obj["metadata"]["annotations"].get(ANN_WITHDRAWN_REVISION) == copy_of_stable
