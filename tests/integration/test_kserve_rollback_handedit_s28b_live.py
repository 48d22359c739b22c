"""Review s28r2, live (real API server, upstream InferenceService CRD, KServe stand-in): a Standard candidate
written into spec.predictor by hand with its canary entry left must read as serving as stable, and both ways
back (rollback(), and the engine's restore of stable) put stable back; a candidate whose version number equals
that of another registered model's version last promoted on the target is never read as serving as stable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kubernetes import client

from controller.devstack.kserve_standin import KServeStandIn
from controller.operator.kubeapi import load_client_config
from controller.traffic import CandidateModel, KServeRouter
from tests.conftest import run_kubectl
from tests.integration.test_traffic_kserve import CANDIDATE_7, NAME, STABLE_6, V6, V7, apply_isvc, get, wait_state

# Version 7 of another registered model: MLflow numbers versions per model.
OTHER_7 = CandidateModel("nsfw-classifier-v2", "7", "mlflow-artifacts:/2/models/n-7/artifacts")


@pytest.fixture(scope="module")
def api(kubeconfig: Path) -> client.ApiClient:
    return load_client_config(str(kubeconfig))


def _hand_promote_standard(api: client.ApiClient, kubeconfig: Path, namespace: str, router: KServeRouter) -> None:
    """Stage 7 against 6, 30%, then an on-call's `kubectl patch` writes 7's storageUri into spec.predictor."""
    apply_isvc(api, namespace, mode="RawDeployment")
    wait_state(router, lambda s: s.ready)
    router.stage(CANDIDATE_7, stable_version="6")
    wait_state(router, lambda s: s.canary_ready)
    router.set_weight(30)
    wait_state(router, lambda s: s.canary_weight == 30)
    result = run_kubectl(kubeconfig, "patch", "isvc", NAME, "-n", namespace, "--type=merge", "-p",
                         json.dumps({"spec": {"predictor": {"model": {"storageUri": V7}}}}))
    assert result.returncode == 0, result.stderr
    state = wait_state(router, lambda s: get(api, namespace)["spec"]["predictor"]["model"]["storageUri"] == V7)
    # What the engine refuses to confirm a rollback from: it restores stable instead of withdrawing the canary.
    assert (state.stable_version, state.canary_version) == ("7", "7"), state
    assert "promoted outside ModelRollout" in state.message


@pytest.mark.integration
@pytest.mark.parametrize("way_back", ["restore", "rollback"])
def test_standard_candidate_written_into_the_predictor_reads_as_stable_and_stable_comes_back(
        api: client.ApiClient, kubeconfig: Path, namespace: str, way_back: str) -> None:
    with KServeStandIn(load_client_config(str(kubeconfig)), namespace=namespace):
        router = KServeRouter(api, namespace, NAME)
        _hand_promote_standard(api, kubeconfig, namespace, router)
        if way_back == "restore":
            router.restore(STABLE_6)  # the engine's RestoreStable
        else:
            router.rollback()  # a withdrawal sent before the hand edit was seen
        state = wait_state(router, lambda s: s.stable_version == "6" and not s.canary_staged and s.ready)
        obj = get(api, namespace)
        assert obj["spec"]["predictor"]["model"]["storageUri"] == V6 and not obj["spec"].get("canary")
        assert state.canary_weight is None


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["Serverless", "RawDeployment"])
def test_a_candidate_numbered_like_another_models_last_promotion_is_not_read_as_stable(
        api: client.ApiClient, kubeconfig: Path, namespace: str, mode: str) -> None:
    """Rollout A (model nsfw-classifier-v2) promoted its 7; spec.model.name then moved to nsfw-classifier, whose
    candidate 7 is staged at 0% and withdrawn (a gate failure): never read as 7 serving as stable."""
    with KServeStandIn(load_client_config(str(kubeconfig)), namespace=namespace):
        apply_isvc(api, namespace, mode=mode)
        router = KServeRouter(api, namespace, NAME)
        wait_state(router, lambda s: s.ready)
        router.stage(OTHER_7, stable_version="6")
        wait_state(router, lambda s: s.canary_ready)
        router.promote()
        wait_state(router, lambda s: s.stable_version == "7" and not s.canary_staged and s.ready)
        router.stage(CANDIDATE_7, stable_version="6")
        state = wait_state(router, lambda s: s.canary_ready)
        assert state.stable_version != "7" and state.canary_version == "7" and not state.canary_weight, state
        router.rollback()
        for _ in range(3):  # Knative: called again while pinned, as the engine does
            state = wait_state(router, lambda s: not s.canary_staged and s.ready)
            if not state.pinned:
                break
            router.rollback()
        assert state.stable_version != "7", state
        model = get(api, namespace)["spec"]["predictor"]["model"]
        assert model["storageUri"] == OTHER_7.storage_uri  # what served before stays
