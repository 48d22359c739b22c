"""The KServe router's rollback after hand edits mid-canary, on the real API server with the upstream
InferenceService CRD and the KServe stand-in: canaryTrafficPercent removed, our annotations removed, and a status
that carries no traffic (which must not read as a 0% canary)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from kubernetes import client

from controller.devstack.kserve_standin import KServeStandIn
from controller.operator.kubeapi import load_client_config
from controller.traffic import CandidateModel, KServeRouter, TargetStateError
from controller.traffic.kserve import ANN_STABLE_URI
from tests.conftest import run_kubectl
from tests.integration.test_traffic_kserve import (
    CANDIDATE_7,
    GROUP,
    NAME,
    PLURAL,
    STABLE_6,
    V6,
    V7,
    VERSION,
    apply_isvc,
    get,
    split,
    wait_state,
)

# A candidate whose revision never becomes ready (the stand-in's marker): KServe keeps it off the traffic until then.
STARTING_7 = CandidateModel("nsfw-classifier", "7", "mlflow-artifacts:/1/models/m-7-never-ready/artifacts")


@pytest.fixture(scope="module")
def api(kubeconfig: Path) -> client.ApiClient:
    return load_client_config(str(kubeconfig))


def _remove_percent(kubeconfig: Path, namespace: str) -> None:
    """An on-call's `kubectl patch --type=json remove`: KServe then rolls the latest ready revision out at 100%."""
    result = run_kubectl(kubeconfig, "patch", "isvc", NAME, "-n", namespace, "--type=json", "-p",
                         '[{"op": "remove", "path": "/spec/predictor/canaryTrafficPercent"}]')
    assert result.returncode == 0, result.stderr


def _wait(check: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "never happened"
        time.sleep(0.05)


@pytest.mark.integration
def test_knative_percent_removed_before_the_candidate_is_ready_is_pinned_and_restored(
        api: client.ApiClient, kubeconfig: Path, namespace: str) -> None:
    """Removed while the candidate still starts: stable is still rolled out, but KServe would roll the candidate out
    at 100% the moment it is ready. rollback() pins canaryTrafficPercent 0 and writes stable's storageUri back."""
    with KServeStandIn(load_client_config(str(kubeconfig)), namespace=namespace):
        apply_isvc(api, namespace)
        router = KServeRouter(api, namespace, NAME)
        stable = wait_state(router, lambda s: s.ready)
        router.stage(STARTING_7, stable_version="6")
        wait_state(router, lambda s: s.canary_staged and not s.canary_ready)
        _remove_percent(kubeconfig, namespace)
        state = wait_state(router, lambda s: "canaryTrafficPercent" not in get(api, namespace)["spec"]["predictor"])
        assert state.stable_name == stable.stable_name and state.canary_version == "7"  # not rolled out yet
        router.rollback()
        predictor = get(api, namespace)["spec"]["predictor"]
        assert predictor["canaryTrafficPercent"] == 0 and predictor["model"]["storageUri"] == V6
        state = wait_state(router, lambda s: s.stable_version == "6" and not s.canary_staged)
        assert state.stable_name == stable.stable_name and split(get(api, namespace)) == {stable.stable_name: 100}


@pytest.mark.integration
def test_knative_percent_removed_after_rollout_reports_the_candidate_as_stable_and_restore_puts_stable_back(
        api: client.ApiClient, kubeconfig: Path, namespace: str) -> None:
    """Rolled out by hand: the candidate is reported as stable (what the engine refuses to confirm a rollback from),
    rollback() alone does not revert what looks like a promotion, and restore(stable), which the engine then
    sends, pins the previous revision and writes stable's storageUri back."""
    with KServeStandIn(load_client_config(str(kubeconfig)), namespace=namespace):
        apply_isvc(api, namespace)
        router = KServeRouter(api, namespace, NAME)
        stable = wait_state(router, lambda s: s.ready)
        router.stage(CANDIDATE_7, stable_version="6")
        wait_state(router, lambda s: s.canary_ready)
        router.set_weight(10)
        wait_state(router, lambda s: s.canary_weight == 10)
        _remove_percent(kubeconfig, namespace)
        state = wait_state(router, lambda s: s.stable_version == "7")
        assert state.canary_weight is None and state.stable_name != stable.stable_name
        router.rollback()  # looks like a promotion: left alone (a later candidate's withdrawal must not undo it)
        assert get(api, namespace)["spec"]["predictor"]["model"]["storageUri"] == V7
        router.restore(STABLE_6)
        state = wait_state(router, lambda s: s.stable_version == "6" and not s.canary_weight)
        obj = get(api, namespace)
        assert obj["spec"]["predictor"]["model"]["storageUri"] == V6
        assert split(obj) == {stable.stable_name: 100}


@pytest.mark.integration
def test_knative_annotation_removed_mid_canary_pins_and_says_which(api: client.ApiClient, kubeconfig: Path,
                                                                   namespace: str) -> None:
    with KServeStandIn(load_client_config(str(kubeconfig)), namespace=namespace):
        apply_isvc(api, namespace)
        router = KServeRouter(api, namespace, NAME)
        stable = wait_state(router, lambda s: s.ready)
        router.stage(CANDIDATE_7, stable_version="6")
        wait_state(router, lambda s: s.canary_ready)
        router.set_weight(30)
        wait_state(router, lambda s: s.canary_weight == 30)
        result = run_kubectl(kubeconfig, "annotate", "isvc", NAME, "-n", namespace, f"{ANN_STABLE_URI}-")
        assert result.returncode == 0, result.stderr
        with pytest.raises(TargetStateError, match=ANN_STABLE_URI):
            router.rollback()
        assert get(api, namespace)["spec"]["predictor"]["canaryTrafficPercent"] == 0
        _wait(lambda: split(get(api, namespace)) == {stable.stable_name: 100})


def _drop_status_field(api: client.ApiClient, namespace: str, *path: str) -> None:
    obj = get(api, namespace)
    parent = obj["status"]
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    client.CustomObjectsApi(api).replace_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, NAME, obj)


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["Serverless", "RawDeployment"])
def test_a_status_with_no_traffic_is_not_a_zero_percent_canary(api: client.ApiClient, kubeconfig: Path,
                                                               namespace: str, mode: str) -> None:
    with KServeStandIn(load_client_config(str(kubeconfig)), namespace=namespace):
        apply_isvc(api, namespace, mode=mode)
        router = KServeRouter(api, namespace, NAME)
        wait_state(router, lambda s: s.ready)
        router.stage(CANDIDATE_7, stable_version="6")
        wait_state(router, lambda s: s.canary_ready)
        router.set_weight(30)
        wait_state(router, lambda s: s.canary_weight == 30)
    # KServe's controller is stopped; its status catches up but carries no split.
    if mode == "Serverless":
        _drop_status_field(api, namespace, "components", "predictor", "traffic")
    else:
        _drop_status_field(api, namespace, "canaryStatuses")
    obj = get(api, namespace)
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    state = router.observe()
    assert not state.synced, state  # the operator then confirms nothing from it
    assert "reports no traffic" in state.message
